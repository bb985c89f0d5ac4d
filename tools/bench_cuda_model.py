"""Whole models on the GPU: pp512 and tg128 tokens/s (llama-bench's tests: a prompt of 512 tokens in one
eval, 128 single-token evals, each from an empty cache), with the fraction of the memory-bandwidth
roofline that generation reaches: weight bytes read per token (every matrix but the token embedding, which
is read one row at a time) over the time per token, against the device-to-device copy bandwidth (bytes
read + written) measured in the same run. Times are medians over repetitions after one warm-up.

    python -m tca.tools.bench_cuda_model MODEL.gguf [MODEL.gguf ...] [-r 3] [--json out.json]
"""

import argparse
import json
import statistics
import time

import gguf
import numpy as np

from tca import _core
from tca.tools.bench import run_test


def copy_bandwidth() -> float:
    n_bytes = 2 << 30
    ms = statistics.median(_core.cuda_bench_copy(n_bytes, 20))
    return 2 * n_bytes / (ms * 1e-3) / 1e9  # GB/s


def weight_bytes_per_token(path: str) -> tuple:
    """(bytes of the matrices one generated token reads, type of the attention matrices)."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    total = sum(int(t.n_bytes) for t in reader.tensors)
    if "output.weight" in tensors:  # untied: the embedding is only gathered
        total -= int(tensors["token_embd.weight"].n_bytes)
    return total, tensors["blk.0.attn_q.weight"].tensor_type.name


def bench(path: str, n_prompt: int, n_gen: int, reps: int, copy_gbs: float) -> dict:
    model = _core.Model(path)
    t0 = time.perf_counter()
    ctx = _core.Context(model, n_ctx=n_prompt + n_gen, n_batch=n_prompt, device="cuda")
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    row = {"model": path, "desc": model.desc, "n_params": model.n_params, "load_s": round(load_s, 2)}
    bytes_tok, qtype = weight_bytes_per_token(path)
    row["type"] = qtype
    for name, p, g in ((f"pp{n_prompt}", n_prompt, 0), (f"tg{n_gen}", 0, n_gen)):
        run_test(ctx, rng, model.n_vocab, p, g, 0, p or 1)
        row[name] = statistics.median(run_test(ctx, rng, model.n_vocab, p, g, 0, p or 1) for _ in range(reps))
    tg = row[f"tg{n_gen}"]
    row["weight_gb_per_token"] = bytes_tok / 1e9
    row["tg_gbs"] = bytes_tok * tg / 1e9
    row["tg_roofline_fraction"] = row["tg_gbs"] / copy_gbs
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-r", "--repetitions", type=int, default=3)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if not _core.cuda_available():
        raise SystemExit("tca-bench-cuda-model: no CUDA GPU (or a build without the CUDA backend)")
    copy_gbs = copy_bandwidth()
    print(f"device: {_core.cuda_device_name()}, copy bandwidth {copy_gbs:.0f} GB/s (read + write)")
    print(f"| model | type | pp{a.n_prompt} t/s | tg{a.n_gen} t/s | GB/token | tg GB/s | of copy |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for path in a.models:
        r = bench(path, a.n_prompt, a.n_gen, a.repetitions, copy_gbs)
        rows.append(r)
        print(
            f"| {r['desc']} | {r['type']} | {r[f'pp{a.n_prompt}']:.0f} | {r[f'tg{a.n_gen}']:.1f} | "
            f"{r['weight_gb_per_token']:.2f} | {r['tg_gbs']:.0f} | {100 * r['tg_roofline_fraction']:.0f}% |",
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"copy_gbs": copy_gbs, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
