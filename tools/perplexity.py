"""tca-perplexity: perplexity of a text, by llama-perplexity's method.

    tca-perplexity -m model.gguf -f text.txt -c 512
    tca-perplexity --text austen -c 256 --chunks 8

The whole text is tokenized once (BOS added when the model asks for it), then cut into consecutive
windows of n_ctx tokens. Each window is evaluated from an empty cache, its first token replaced by BOS
when the model uses one; only the second half of each window is scored, so every scored token sees at
least n_ctx / 2 tokens of context. Prints the running estimate after each chunk and the final
perplexity with its standard error.
"""

import math
import sys
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np

from tca.cli import ArgumentParser, add_tca_args, run_command, tca_kwargs


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tca-perplexity", description="Perplexity of a text (llama-perplexity method).")
    p.add_argument("-m", "--model", help="GGUF model file (default: the bundled SmolLM2-135M-Instruct)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-f", "--file", help="text file to score")
    src.add_argument("--text", help="a known text to score: pydoc, austen or austen:<novel> (tca.fetch.text)")
    p.add_argument("-c", "--ctx-size", type=int, default=512, help="window length in tokens (512)")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="tokens per batch (512)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (0: half the cores)")
    p.add_argument("--chunks", type=int, default=-1, help="score at most this many windows (-1: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (the GPU if it runs the model) (cpu)")
    p.add_argument("--attention", choices=["dense", "tca"], default="dense", help="attention kind (dense)")
    add_tca_args(p)
    return p


def window_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row; logits [n, n_vocab], targets [n]."""
    x = logits.astype(np.float64)
    x_max = x.max(axis=1, keepdims=True)
    log_z = x_max[:, 0] + np.log(np.exp(x - x_max).sum(axis=1))
    return log_z - x[np.arange(len(targets)), targets]


def perplexity_estimate(nll_sum: float, nll2_sum: float, count: int) -> tuple[float, float]:
    """The perplexity exp(mean nll) and its standard error (propagated from that of the mean)."""
    mean = nll_sum / count
    ppl = math.exp(mean)
    var = nll2_sum / count - mean * mean
    err = math.sqrt(var / (count - 1)) if count > 1 and var > 0 else 0.0
    return ppl, ppl * err


def read_text(args) -> str:
    if args.text is not None:
        from tca import fetch

        return fetch.text(args.text)
    if args.file is None:
        raise ValueError("no text: give -f FILE or --text pydoc|austen")
    with open(args.file, encoding="utf-8", errors="replace") as f:
        return f.read()


def _main(argv: Optional[Sequence[str]]) -> int:
    from tca import Engine

    args = build_parser().parse_args(argv)
    n_ctx = args.ctx_size
    if n_ctx < 8:
        raise ValueError(f"-c/--ctx-size must be >= 8, got {n_ctx}")
    text = read_text(args)
    engine = Engine(
        args.model,
        n_ctx=n_ctx,
        n_threads=args.threads or None,
        n_batch=args.batch_size,
        device=args.device,
        attention=args.attention,
        **tca_kwargs(args),
    )
    model, ctx = engine.model, engine.ctx
    t0 = time.perf_counter()
    tokens = np.array(model.tokenize(text, model.add_bos, False), dtype=np.int64)
    print(
        f"perplexity: tokenized {len(text)} characters in {time.perf_counter() - t0:.2f} s", file=sys.stderr
    )
    n_chunk = len(tokens) // n_ctx
    if args.chunks >= 0:
        n_chunk = min(n_chunk, args.chunks)
    if n_chunk < 1:
        raise ValueError(
            f"the text has {len(tokens)} tokens: at least {n_ctx} are needed for a context of {n_ctx}"
        )
    first = n_ctx // 2
    print(
        f"perplexity: {len(tokens)} tokens, {n_chunk} chunks of {n_ctx}, scoring the last "
        f"{n_ctx - first - 1} tokens of each",
        file=sys.stderr,
    )
    nll_sum, nll2_sum, count = 0.0, 0.0, 0
    t_start = time.perf_counter()
    for i in range(n_chunk):
        window = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
        if model.add_bos and model.bos_id >= 0:
            window[0] = model.bos_id
        ctx.reset()
        logits = ctx.eval(window.tolist(), logits_all=True)  # [n_ctx, n_vocab]
        nll = window_nll(logits[first : n_ctx - 1], window[first + 1 :])
        if not np.all(np.isfinite(nll)):
            raise ValueError(f"chunk {i + 1}: the model produced non-finite logits")
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(nll)
        if i == 0:
            per_chunk = time.perf_counter() - t_start
            print(
                f"perplexity: {per_chunk:.2f} s per chunk, about {per_chunk * n_chunk:.1f} s in all",
                file=sys.stderr,
            )
        ppl, _ = perplexity_estimate(nll_sum, nll2_sum, count)
        print(f"[{i + 1}]{ppl:.4f},", end="", flush=True)
    ppl, ppl_err = perplexity_estimate(nll_sum, nll2_sum, count)
    print()
    print(f"Final estimate: PPL = {ppl:.4f} +/- {ppl_err:.5f}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_main, argv, "tca-perplexity")


if __name__ == "__main__":
    sys.exit(main())
