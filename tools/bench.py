"""tca-bench: prompt processing and generation speed, llama-bench style.

    tca-bench -m model.gguf -p 512 -n 128 -r 5 -d 0,4096 -t 2 -o md

Each test runs on random tokens (as llama-bench does): `pp512` evaluates 512 prompt tokens in one call,
`tg128` generates 128 tokens one at a time; `@ d4096` first fills the cache with 4096 tokens (not
timed). Every repetition starts from an empty cache. Reports tokens/s as the median +- standard
deviation over the repetitions, and the KV cache bytes at the end of the test.
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Optional

import gguf
import numpy as np

from tca.cli import ArgumentParser, add_tca_args, run_command, tca_kwargs


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers, got '{text}'"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="tca-bench", description="Measure prompt and generation speed (llama-bench style)."
    )
    p.add_argument("-m", "--model", help="GGUF model file (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument(
        "-p", "--n-prompt", type=int_list, default=[512], help="prompt lengths, e.g. 128,512 (512)"
    )
    p.add_argument("-n", "--n-gen", type=int_list, default=[128], help="generation lengths (128)")
    p.add_argument("-d", "--n-depth", type=int_list, default=[0], help="cache depths to start from (0)")
    p.add_argument("-t", "--threads", type=int_list, default=[0], help="thread counts (0: half the cores)")
    p.add_argument("-b", "--batch-size", type=int_list, default=[512], help="batch sizes (512)")
    p.add_argument("--attention", type=str_list, default=["dense"], help="dense,tca (dense)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (the GPU if it runs the model) (cpu)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="repetitions of each test (5)")
    p.add_argument("-o", "--output", choices=["md", "csv", "json"], default="md", help="output format (md)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each test")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens (0)")
    add_tca_args(p)
    return p


def format_size(n_bytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def format_params(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def model_type(model) -> str:
    """llama-bench's model column: architecture, size label and quantization, e.g. "llama 135M Q4_1"."""
    md = model.metadata
    size = md.get("general.size_label") or format_params(model.n_params).replace(" ", "")
    try:
        ftype = gguf.LlamaFileType(int(md["general.file_type"])).name
        ftype = ftype.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (KeyError, ValueError):
        ftype = "?"
    return f"{model.arch} {size} {ftype}"


def run_test(ctx, rng, n_vocab: int, n_prompt: int, n_gen: int, n_depth: int, n_batch: int) -> float:
    """One timed run from an empty cache; tokens per second."""
    ctx.reset()
    for start in range(0, n_depth, n_batch):
        ctx.eval(rng.integers(0, n_vocab, size=min(n_batch, n_depth - start)).tolist())
    tokens = rng.integers(0, n_vocab, size=max(n_prompt, n_gen)).tolist()
    t0 = time.perf_counter()
    if n_prompt:
        ctx.eval(tokens[:n_prompt])
    else:
        for t in tokens[:n_gen]:
            ctx.eval([t])
    return (n_prompt or n_gen) / (time.perf_counter() - t0)


def _main(argv: Optional[Sequence[str]]) -> int:
    from tca import Engine

    args = build_parser().parse_args(argv)
    if args.repetitions < 1:
        raise ValueError(f"-r/--repetitions must be >= 1, got {args.repetitions}")
    for a in args.attention:
        if a not in ("dense", "tca"):
            raise ValueError(f"--attention: unknown kind '{a}' (dense or tca)")
    tests = [(p, 0) for p in args.n_prompt if p > 0] + [(0, n) for n in args.n_gen if n > 0]
    if not tests:
        raise ValueError("nothing to run: every -p and -n is 0")
    n_ctx = max(args.n_depth) + max(max(p, n) for p, n in tests)
    rng = np.random.default_rng(args.seed)
    rows = []
    for threads in args.threads:
        for n_batch in args.batch_size:
            for attention in args.attention:
                engine = Engine(
                    args.model,
                    n_ctx=n_ctx,
                    n_threads=threads or None,
                    n_batch=n_batch or 512,
                    device=args.device,
                    attention=attention,
                    **tca_kwargs(args),
                )
                model, ctx = engine.model, engine.ctx
                for n_depth in args.n_depth:
                    for n_prompt, n_gen in tests:
                        run = (model.n_vocab, n_prompt, n_gen, n_depth, n_batch or 512)
                        if not args.no_warmup:
                            run_test(ctx, rng, *run)
                        samples = [run_test(ctx, rng, *run) for _ in range(args.repetitions)]
                        name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
                        rows.append(
                            {
                                "model_filename": engine.model_path,
                                "model_type": model_type(model),
                                "model_size": model.size_bytes,
                                "model_n_params": model.n_params,
                                "backend": ctx.device.upper(),
                                "n_threads": engine.n_threads,
                                "n_batch": n_batch or 512,
                                "attention": attention,
                                "n_prompt": n_prompt,
                                "n_gen": n_gen,
                                "n_depth": n_depth,
                                "test": name + (f" @ d{n_depth}" if n_depth else ""),
                                "median_ts": statistics.median(samples),
                                "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
                                "samples_ts": samples,
                                "kv_bytes": ctx.kv_stats()["bytes"],
                            }
                        )
                        if args.output == "md":
                            print_md(rows, header=len(rows) == 1)
    if args.output == "csv":
        keys = [k for k in rows[0] if k != "samples_ts"]
        print(",".join(keys))
        for r in rows:
            print(",".join(f'"{r[k]}"' if isinstance(r[k], str) else str(r[k]) for k in keys))
    elif args.output == "json":
        print(json.dumps(rows, indent=2))
    return 0


def print_md(rows: list, header: bool) -> None:
    """Prints the last row of the table (and the header first), so results show as they come."""
    if header:
        print("| model | size | params | backend | threads | attention | test | t/s | kv bytes |")
        print("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |")
    r = rows[-1]
    print(
        f"| {r['model_type']} | {format_size(r['model_size'])} | {format_params(r['model_n_params'])} "
        f"| {r['backend']} | {r['n_threads']} | {r['attention']} | {r['test']} "
        f"| {r['median_ts']:.2f} ± {r['stddev_ts']:.2f} | {format_size(r['kv_bytes'])} |"
    )
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_main, argv, "tca-bench")


if __name__ == "__main__":
    sys.exit(main())
