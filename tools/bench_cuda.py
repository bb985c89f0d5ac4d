"""Benchmarks of the CUDA kernels against the device's measured ceilings.

Attention alone (32 query heads, 8 KV heads, head_dim 128, fp16 K/V) at 4K..128K tokens: prefill TFLOP/s
(causal FLOPs = 4 * L^2/2 * head_dim * n_head) and decode GB/s on the K/V bytes read, dense and TCA-like
sparse (a global list of every 10th token plus a window of 4096); quantized matrix-vector GB/s at
Llama-3.1-8B shapes. Times are medians over repeats, taken with CUDA events. Decode runs 20 launches back
to back, as one captured CUDA graph (the kernels' time) and launched one by one from the host, whose
launch calls (~4 us each on the H100 machine, two per decode) bound the short lengths; the copy bandwidth
(device-to-device, bytes read + written) and the bf16 matrix rate (through PyTorch, when present) are
measured in the same run.

    python -m tca.tools.bench_cuda [--sizes 4096,16384] [--json out.json]
"""

import argparse
import json
import statistics

import numpy as np

from tca import _core

N_HEAD, N_HEAD_KV, HEAD_DIM = 32, 8, 128
WINDOW, GLOBAL_STRIDE = 4096, 10
TYPE_IDS = {"F16": 1, "Q4_K": 12, "Q8_0": 8, "Q6_K": 14}
MATVEC_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (n_out, n_in)
ROW_BYTES = {
    "F16": lambda n_in: 2 * n_in,
    "Q4_K": lambda n_in: n_in // 256 * 144,
    "Q8_0": lambda n_in: n_in // 32 * 34,
    "Q6_K": lambda n_in: n_in // 256 * 210,
}


def median(ms):
    return statistics.median(ms)


def copy_bandwidth():
    n_bytes = 2 << 30
    ms = median(_core.cuda_bench_copy(n_bytes, 20))
    return 2 * n_bytes / (ms * 1e-3) / 1e9  # GB/s, read + write


def bf16_peak():
    try:
        import torch
    except ImportError:
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        a @ b
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    return 2 * n**3 / (median(times) * 1e-3) / 1e12


def plan(n_entries, n_q, sparse):
    """Plans of the last n_q positions: dense causal, or window + every GLOBAL_STRIDE-th token."""
    hi = np.tile(np.arange(n_entries - n_q + 1, n_entries + 1, dtype=np.int32), (N_HEAD_KV, 1))
    if not sparse:
        return np.zeros_like(hi), hi, [], hi[0].astype(np.int64).sum()
    lo = np.maximum(hi - WINDOW, 0).astype(np.int32)
    glob = np.arange(0, n_entries, GLOBAL_STRIDE, dtype=np.int32)
    extras = [glob] * N_HEAD_KV
    n_pairs = (hi[0] - lo[0]).astype(np.int64).sum() + np.searchsorted(glob, lo[0]).sum()
    return lo, hi, extras, n_pairs


def bench_prefill(n, sparse):
    lo, hi, extras, n_pairs = plan(n, n, sparse)
    reps = 3 if n >= 65536 else 5 if n >= 16384 else 10
    ms = median(_core.cuda_bench_attention(N_HEAD, N_HEAD_KV, HEAD_DIM, n, lo, hi, extras, 0, reps))
    flops_nominal = 4 * n * n / 2 * HEAD_DIM * N_HEAD
    flops_done = 4 * n_pairs * HEAD_DIM * N_HEAD
    return ms, flops_nominal, flops_done


def bench_decode(n, sparse):
    """Milliseconds per launch as a graph and as host launches, and the K/V bytes read."""
    lo, hi, extras, n_pairs = plan(n, 1, sparse)
    ms = [
        median(_core.cuda_bench_attention(N_HEAD, N_HEAD_KV, HEAD_DIM, n, lo, hi, extras, 0, 10, 20, graph))
        for graph in (True, False)
    ]
    kv_bytes = 2 * N_HEAD_KV * int(n_pairs) * HEAD_DIM * 2
    return ms[0], ms[1], kv_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,16384,32768,65536,131072", help="attention lengths in tokens")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    res = {"device": _core.cuda_device_name(), "copy_GBps": copy_bandwidth(), "bf16_TFLOPs": bf16_peak()}
    print(f"device {res['device']}: copy {res['copy_GBps']:.0f} GB/s (read + write)", end="")
    print(f", bf16 matmul {res['bf16_TFLOPs']:.0f} TFLOP/s" if res["bf16_TFLOPs"] else "")
    peak, bw = res["bf16_TFLOPs"], res["copy_GBps"]

    rows = []
    print("\nattention prefill (32 q heads, 8 kv heads, head_dim 128)")
    print(f"{'tokens':>8} {'mode':>7} {'ms':>9} {'TFLOP/s':>8} {'of peak':>8} {'eff TFLOP/s':>11}")
    for n in sizes:
        dense_ms = None
        for sparse in (False, True):
            ms, fl_nom, fl_done = bench_prefill(n, sparse)
            mode = "tca" if sparse else "dense"
            dense_ms = ms if not sparse else dense_ms
            tf = fl_nom / (ms * 1e-3) / 1e12  # nominal causal FLOPs: tca shows the speed-up over dense
            eff = fl_done / (ms * 1e-3) / 1e12
            frac = f"{100 * eff / peak:7.1f}%" if peak else "    n/a"
            print(f"{n:>8} {mode:>7} {ms:>9.3f} {tf:>8.1f} {frac} {eff:>11.1f}")
            rows.append(dict(kind="prefill", tokens=n, mode=mode, ms=ms, tflops_nominal=tf, tflops_done=eff))
        print(f"{'':>8} tca speed-up over dense {dense_ms / rows[-1]['ms']:.2f}x")

    print("\nattention decode (one query, split-KV; us per launch in a graph, and launched from the host)")
    head = f"{'tokens':>8} {'mode':>7} {'us':>9} {'KV MB':>8} {'GB/s':>8} {'of copy':>8}"
    print(f"{head} {'host-launched us':>17}")
    for n in sizes:
        for sparse in (False, True):
            ms, ms_host, kv_bytes = bench_decode(n, sparse)
            gbs = kv_bytes / (ms * 1e-3) / 1e9
            mode = "tca" if sparse else "dense"
            frac = 100 * gbs / bw
            print(
                f"{n:>8} {mode:>7} {ms * 1e3:>9.1f} {kv_bytes / 1e6:>8.1f} {gbs:>8.0f} {frac:7.1f}%"
                f" {ms_host * 1e3:>17.1f}"
            )
            rows.append(
                dict(kind="decode", tokens=n, mode=mode, ms=ms, ms_host=ms_host, kv_bytes=kv_bytes, GBps=gbs)
            )

    print("\nmatvec (one token)")
    print(f"{'type':>6} {'n_out':>6} {'n_in':>6} {'us':>8} {'MB':>7} {'GB/s':>7} {'of copy':>8}")
    for name, type_id in TYPE_IDS.items():
        for n_out, n_in in MATVEC_SHAPES:
            w_bytes = n_out * ROW_BYTES[name](n_in)
            n_copies = max(2, -(-(512 << 20) // w_bytes))  # rotate over 512 MiB: out of L2
            ms = median(_core.cuda_bench_matvec(type_id, n_out, n_in, n_copies, 20, 20))
            gbs = (w_bytes + 4 * (n_in + n_out)) / (ms * 1e-3) / 1e9
            mb, frac = w_bytes / 1e6, 100 * gbs / bw
            print(f"{name:>6} {n_out:>6} {n_in:>6} {ms * 1e3:>8.1f} {mb:>7.1f} {gbs:>7.0f} {frac:7.1f}%")
            rows.append(dict(kind="matvec", type=name, n_out=n_out, n_in=n_in, ms=ms, GBps=gbs))

    res["results"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
