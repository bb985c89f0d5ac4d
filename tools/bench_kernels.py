"""Micro-benchmark of the CPU weight kernels: matrix-vector (generation, n_tok = 1) and matrix-matrix
(prompt processing, n_tok = 512) products for every weight type at SmolLM2 / Qwen2.5 shapes.

Prints the median time, GB/s of weight bytes for the matrix-vector product and GFLOP/s for the
matrix-matrix one (median, and best of the repeats: on a shared machine the best run is the one that
was not preempted), the best against a measured ceiling: the memory bandwidth of large NumPy copies (one
per thread; read + write bytes) and the fp32 FMA rate of register-only FMA chains on every thread.
Matrices that fit in the caches can beat the copy bandwidth.

    python -m tca.tools.bench_kernels [--threads 2] [--types Q4_1,Q8_0] [--json out.json]
"""

import argparse
import json
import statistics
import threading
import time

import gguf
import numpy as np

from tca import _core

T = gguf.GGMLQuantizationType
TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
# (name, n_in, n_out): SmolLM2-135M attention/FFN and output, Qwen2.5-0.5B FFN
SHAPES = [
    ("smol.ffn_up", 576, 1536),
    ("smol.ffn_down", 1536, 576),
    ("smol.output", 576, 49152),
    ("qwen.ffn_up", 896, 4864),
    ("qwen.ffn_down", 4864, 896),
]
# byte offsets of the fp16 scale fields in a block
FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0]}
FP16_FIELDS.update({"Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]})


def random_weight(type_name, n_out, n_in, rng):
    """Random codes with finite fp16 scales: the kernels' speed does not depend on the values."""
    qtype = T[type_name]
    if type_name == "F32":
        return rng.standard_normal((n_out, n_in), dtype=np.float32).view(np.uint8).ravel()
    if type_name in ("F16", "BF16"):
        return rng.standard_normal((n_out, n_in), dtype=np.float32).astype(np.float16).view(np.uint8).ravel()
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_out * n_in // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in FP16_FIELDS[type_name]:
        raw[:, off : off + 2] = np.full((n_blocks, 1), 0.01, dtype=np.float16).view(np.uint8)
    return raw.ravel()


def measure_bandwidth(n_threads, n_bytes=256 << 20):
    """GB/s of n_threads concurrent NumPy copies (read + write bytes); NumPy drops the GIL while copying."""
    srcs = [np.ones(n_bytes // 8) for _ in range(n_threads)]
    dsts = [np.empty_like(s) for s in srcs]
    best = 0.0
    for _ in range(3):
        threads = [threading.Thread(target=np.copyto, args=(d, s)) for d, s in zip(dsts, srcs)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, 2 * n_bytes * n_threads / (time.perf_counter() - t0) / 1e9)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--types", default=",".join(TYPES), help="comma-separated weight types")
    p.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="comma-separated shape names")
    p.add_argument("--n-tok", type=int, default=512, help="tokens of the matrix-matrix product")
    p.add_argument("--repeat", type=int, default=30, help="repeats of the matrix-vector product")
    p.add_argument("--repeat-pp", type=int, default=5, help="repeats of the matrix-matrix product")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)

    bw = measure_bandwidth(args.threads)
    peak = _core.fma_peak_gflops(args.threads)
    print(f"threads {args.threads}: memory copy {bw:.1f} GB/s, fp32 FMA {peak:.0f} GFLOP/s (measured)")
    print(
        f"{'type':5} {'shape':14} {'n_out x n_in':>13} | {'tg ms':>7} {'GB/s':>6} {'best':>6} {'%bw':>4} | "
        f"{'pp ms':>8} {'GFLOP/s':>7} {'best':>7} {'%peak':>5}"
    )
    rng = np.random.default_rng(0)
    shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]
    rows = []
    for type_name in args.types.split(","):
        block = gguf.GGML_QUANT_SIZES[T[type_name]][0]
        for name, n_in, n_out in shapes:
            if n_in % block != 0:
                continue
            raw = random_weight(type_name, n_out, n_in, rng)
            type_id = int(T[type_name])
            x1 = rng.standard_normal((1, n_in), dtype=np.float32)
            t_vec = _core.bench_matmul(type_id, raw, n_in, n_out, x1, args.threads, args.repeat)
            xn = rng.standard_normal((args.n_tok, n_in), dtype=np.float32)
            t_mat = _core.bench_matmul(type_id, raw, n_in, n_out, xn, args.threads, args.repeat_pp)
            gbs = [raw.size / t / 1e9 for t in (statistics.median(t_vec), min(t_vec))]
            flop = 2 * n_in * n_out * args.n_tok
            gflops = [flop / t / 1e9 for t in (statistics.median(t_mat), min(t_mat))]
            row = dict(type=type_name, shape=name, n_in=n_in, n_out=n_out, tg_s=t_vec, tg_gbs=gbs[0])
            rows.append(
                dict(row, tg_gbs_best=gbs[1], pp_s=t_mat, pp_gflops=gflops[0], pp_gflops_best=gflops[1])
            )
            ms = [statistics.median(t_vec) * 1e3, statistics.median(t_mat) * 1e3]
            print(
                f"{type_name:5} {name:14} {n_out:6}x{n_in:<6} | {ms[0]:7.3f} {gbs[0]:6.1f} {gbs[1]:6.1f} "
                f"{100 * gbs[1] / bw:4.0f} | {ms[1]:8.2f} {gflops[0]:7.1f} {gflops[1]:7.1f} "
                f"{100 * gflops[1] / peak:5.0f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            summary = {"threads": args.threads, "bandwidth_gbs": bw, "peak_gflops": peak}
            json.dump(dict(summary, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
