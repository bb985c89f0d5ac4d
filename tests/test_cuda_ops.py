"""CUDA kernels against float64 NumPy references of the CPU semantics (engine/attention.h, engine/ops.h,
ggml dequantization through gguf-py). Skipped without a CUDA GPU: CI has none."""

import numpy as np
import pytest

from tca import _core

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not _core.cuda_available(), reason="needs a CUDA GPU and a build with the CUDA backend (nvcc found)"
    ),
]


def rel_err(out, ref):
    assert np.isfinite(out).all(), "output has NaN/Inf (unwritten or overflowed elements)"
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


# ---- attention ---------------------------------------------------------------------------------------


def attention_ref(q, k, v, lo, hi, extras):
    """The CPU core's semantics in float64: query i of KV head ig sees [lo, hi) and extras below lo."""
    n_q, n_head, d = q.shape
    n_head_kv, n_entries, _ = k.shape
    group = n_head // n_head_kv
    out = np.zeros((n_q, n_head, d))
    kf, vf = k.astype(np.float64), v.astype(np.float64)
    for ig in range(n_head_kv):
        ex = extras[ig] if extras else np.zeros(0, np.int32)
        for i in range(n_q):
            keys = np.concatenate([ex[ex < lo[ig, i]], np.arange(lo[ig, i], hi[ig, i])]).astype(np.int64)
            if keys.size == 0:
                continue
            qg = q[i, ig * group : (ig + 1) * group].astype(np.float64)
            s = qg @ kf[ig, keys].T / np.sqrt(d)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[i, ig * group : (ig + 1) * group] = (p / p.sum(axis=1, keepdims=True)) @ vf[ig, keys]
    return out


def random_kv(rng, n_head_kv, n_entries, d):
    k = rng.uniform(-1, 1, (n_head_kv, n_entries, d)).astype(np.float16)
    v = rng.uniform(-1, 1, (n_head_kv, n_entries, d)).astype(np.float16)
    return k, v


def causal_plan(n_head_kv, n_q, n_entries, window=0):
    """The last n_q positions of a cache of n_entries attend causally (within a window when given)."""
    hi = np.tile(np.arange(n_entries - n_q + 1, n_entries + 1, dtype=np.int32), (n_head_kv, 1))
    lo = np.maximum(hi - window, 0).astype(np.int32) if window else np.zeros_like(hi)
    return lo, hi


def run_attention(rng, n_q, n_head, n_head_kv, d, n_entries, window=0, n_extra=0, n_split=0):
    q = (rng.standard_normal((n_q, n_head, d)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, n_head_kv, n_entries, d)
    lo, hi = causal_plan(n_head_kv, n_q, n_entries, window)
    extras = []
    if n_extra:
        extras = [
            np.sort(rng.choice(n_entries, size=min(n_extra, n_entries), replace=False)).astype(np.int32)
            for _ in range(n_head_kv)
        ]
    out = _core.cuda_attention(q, k, v, lo, hi, extras, n_split)
    ref = attention_ref(q, k, v, lo, hi, extras)
    return rel_err(out, ref)


# (n_q, n_head, n_head_kv, head_dim, n_entries, window, n_extra, n_split)
ATTN_CASES = [
    (77, 8, 2, 64, 77, 0, 0, 0),  # dense causal prefill, GQA 4, odd length
    (130, 3, 3, 128, 130, 0, 0, 0),  # GQA 1, head_dim 128
    (50, 16, 2, 128, 211, 0, 0, 0),  # GQA 8, chunk at the end of a longer cache
    (97, 8, 2, 64, 300, 37, 40, 0),  # TCA shape: window + sorted extras, different per head
    (200, 4, 1, 128, 333, 64, 90, 3),  # extras with a forced split (prefill merge)
    (1, 32, 8, 128, 5000, 0, 0, 0),  # decode, split over keys
    (1, 8, 2, 64, 3001, 100, 300, 0),  # decode with extras
    (3, 8, 2, 128, 1025, 0, 0, 1),  # decode shape, several queries, no split
    (3, 8, 1, 64, 999, 50, 20, 5),  # decode shape, GQA 8, extras, forced split
    (64, 8, 2, 64, 3000, 128, 1500, 0),  # many extras: whole tiles of extras seen by every row
    (1, 8, 2, 128, 4000, 256, 2000, 0),  # the same in the decode shape
    (1, 28, 4, 64, 1500, 200, 100, 0),  # decode, GQA 7: one n-tile of 8 rows, one of them padding
    (2, 12, 4, 128, 2500, 0, 0, 0),  # decode, two queries of GQA 3 in one n-tile
    (2, 8, 1, 128, 2000, 100, 300, 0),  # decode, 16 rows (two n-tiles), extras
    (1, 8, 2, 128, 40000, 4096, 3600, 0),  # decode, a long list of extras (three rounds of its search)
    (40, 8, 2, 64, 40000, 1000, 2500, 0),  # prefill rows whose lo differ, over a long list of extras
]


@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "q{}_h{}_kv{}_d{}_n{}_w{}_x{}_s{}".format(*c))
def test_attention_matches_cpu_semantics(case):
    rng = np.random.default_rng(sum(case))
    n_q, n_head, n_head_kv, d, n_entries, window, n_extra, n_split = case
    err = run_attention(rng, n_q, n_head, n_head_kv, d, n_entries, window, n_extra, n_split)
    # fp16 Q/K/V and fp16 probabilities with fp32 accumulation: about 1e-3 relative.
    assert err < 4e-3


def test_attention_split_count_does_not_change_result():
    rng = np.random.default_rng(7)
    q = (rng.standard_normal((5, 8, 64)) * 2).astype(np.float32)
    k, v = random_kv(rng, 2, 700, 64)
    lo, hi = causal_plan(2, 5, 700)
    ref = attention_ref(q, k, v, lo, hi, [])
    outs = [_core.cuda_attention(q, k, v, lo, hi, [], s) for s in (1, 2, 7)]
    for o in outs:
        assert rel_err(o, ref) < 4e-3
        # splits only move where the fp16 probabilities are rounded
        assert rel_err(o, outs[0].astype(np.float64)) < 1e-3


@pytest.mark.parametrize(
    "n_head,n_head_kv,d,n_entries,window,n_extra,n_split",
    [
        (32, 8, 128, 20000, 0, 0, 5),
        (8, 2, 64, 9000, 3000, 700, 7),
        (4, 4, 128, 640, 0, 0, 2),  # four tiles from the counter
        (16, 1, 64, 5000, 0, 0, 16),  # 16 rows per CTA
        (16, 1, 64, 5000, 0, 0, 100),  # no counter: splits left without a tile
        (32, 8, 128, 4096, 0, 0, 32),  # no counter: every split's own two tiles
        (32, 8, 128, 8192, 0, 0, 32),  # no counter: four tiles per split
    ],
)
def test_attention_decode_tile_counters(n_head, n_head_kv, d, n_entries, window, n_extra, n_split):
    """Decode splits that take tiles from a counter per KV head after their first three give the result of
    fixed shares, and leave the counters at zero (the binding checks). With up to four tiles per split, no
    counter is used."""
    rng = np.random.default_rng(n_entries)
    q = (rng.standard_normal((1, n_head, d)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, n_head_kv, n_entries, d)
    lo, hi = causal_plan(n_head_kv, 1, n_entries, window)
    extras = []
    if n_extra:
        extras = [
            np.sort(rng.choice(lo.min(), n_extra, replace=False)).astype(np.int32) for _ in range(n_head_kv)
        ]
    ref = attention_ref(q, k, v, lo, hi, extras)
    dynamic = _core.cuda_attention(q, k, v, lo, hi, extras, n_split, tile_counters=True)
    fixed = _core.cuda_attention(q, k, v, lo, hi, extras, n_split, tile_counters=False)
    assert rel_err(dynamic, ref) < 4e-3
    assert rel_err(dynamic, fixed.astype(np.float64)) < 1e-3


@pytest.mark.parametrize(
    "n_head,n_entries,n_split,window",
    [(32, 4096, 0, 0), (32, 4096, 7, 0), (32, 32768, 0, 0), (8, 1000, 0, 0), (32, 20000, 0, 3000)],
)
def test_attention_decode_launches_back_to_back(n_head, n_entries, n_split, window):
    """Decode launches back to back on one stream, alternating V and -V, each into its own output: with
    programmatic launches a launch's CTAs start and load K/V while the previous launch's merge runs, and
    the merge rezeroes the tile counters the next launch draws from. Each output must be its own launch's
    (the neighbours' show the other sign)."""
    rng = np.random.default_rng(n_entries + n_split)
    q = (rng.standard_normal((1, n_head, 128)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, 8, n_entries, 128)
    lo, hi = causal_plan(8, 1, n_entries, window)
    ref = attention_ref(q, k, v, lo, hi, [])
    outs = _core.cuda_attention_launches(q, k, v, lo, hi, [], n_split, True, 12)
    for i, out in enumerate(outs):
        assert rel_err(out, ref if i % 2 == 0 else -ref) < 4e-3


@pytest.mark.parametrize("tile_counters", [True, False])
def test_attention_decode_splits_rows_without_keys(tile_counters):
    """Two decode queries over split keys, one of them with no key in one KV head: the merge of the
    splits writes zeros there and the exact result elsewhere, with either tile schedule."""
    rng = np.random.default_rng(11)
    q = (rng.standard_normal((2, 8, 128)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, 2, 3000, 128)
    lo = np.array([[0, 100], [2999, 40]], np.int32)
    hi = np.array([[2999, 3000], [2999, 3000]], np.int32)  # head 1, query 0: empty range
    out = _core.cuda_attention(q, k, v, lo, hi, [], 6, tile_counters=tile_counters)
    ref = attention_ref(q, k, v, lo, hi, [])
    assert np.array_equal(out[0, 4:], np.zeros((4, 128), np.float32))
    assert rel_err(out, ref) < 4e-3


@pytest.mark.parametrize(
    "n_head,n_head_kv,d,n_entries,n_split",
    [(32, 8, 128, 1000, 8), (16, 1, 64, 1000, 8), (8, 2, 128, 100, 8), (32, 8, 128, 4096, 32)],
)
def test_attention_decode_tile_pairs(n_head, n_head_kv, d, n_entries, n_split):
    """One-query decode whose splits have at most two tiles each runs CTAs of 8 warps that take both tiles
    at once: a window with extras below it, 8 and 16 rows, both head dims, and splits left with one tile
    or none."""
    rng = np.random.default_rng(n_entries + d)
    q = (rng.standard_normal((1, n_head, d)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, n_head_kv, n_entries, d)
    lo, hi = causal_plan(n_head_kv, 1, n_entries, n_entries // 3)
    extras = [
        np.sort(rng.choice(lo.min(), lo.min() // 2, replace=False)).astype(np.int32) for _ in range(n_head_kv)
    ]
    out = _core.cuda_attention(q, k, v, lo, hi, extras, n_split)
    assert rel_err(out, attention_ref(q, k, v, lo, hi, extras)) < 4e-3


def test_attention_query_without_keys_writes_zeros():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 4, 64)).astype(np.float32)
    k, v = random_kv(rng, 2, 20, 64)
    lo = np.array([[0, 5, 0, 3], [0, 0, 2, 9]], np.int32)
    hi = np.array([[0, 9, 4, 3], [7, 0, 2, 20]], np.int32)  # empty ranges, no extras: zeros
    out = _core.cuda_attention(q, k, v, lo, hi, [], 0)
    ref = attention_ref(q, k, v, lo, hi, [])
    assert np.isfinite(out).all()
    assert np.array_equal(out[0, :2], np.zeros((2, 64), np.float32))
    assert rel_err(out, ref) < 4e-3


def test_attention_rejects_unsupported_head_dim():
    q = np.ones((2, 2, 96), np.float32)
    k = np.ones((1, 4, 96), np.float16)
    lo = np.zeros((1, 2), np.int32)
    hi = np.full((1, 2), 4, np.int32)
    with pytest.raises(_core.TcaError, match="head_dim 96"):
        _core.cuda_attention(q, k, k, lo, hi, [], 0)


def tca_prefill_plan(n, n_global, n_new, b, w, global_sets):
    """lo, hi [n_head_kv, n_new] and extras as engine/tca_runtime.cpp tca_plan_prefill builds them for a
    chunk of n_new tokens ending a cache of n entries whose first n_global are compacted: query i sees its
    window joined with the tail, [r0 + max(0, min(rel - w + 1, L_g)), i], plus the compacted tokens and
    the head's global set (positions relative to r0 = n_global) below that range."""
    r0, n0 = n_global, n - n_new
    L_g = (n - r0 - w) // b * b
    rel = np.arange(n0, n) - r0
    lo = r0 + np.maximum(0, np.minimum(rel - w + 1, L_g))
    hi = np.arange(n0 + 1, n + 1)
    extras = [
        np.concatenate([np.arange(r0), r0 + np.asarray(g, np.int64)]).astype(np.int32) for g in global_sets
    ]
    n_kv = len(global_sets)
    return np.tile(lo, (n_kv, 1)).astype(np.int32), np.tile(hi, (n_kv, 1)).astype(np.int32), extras


def random_global_set(rng, L_g, b):
    """A global set as spec 4 makes one: every block of the region [0, L_g) keeps 1 to b tokens."""
    return np.concatenate(
        [j + np.sort(rng.choice(b, size=rng.integers(1, b + 1), replace=False)) for j in range(0, L_g, b)]
    )


def row_errors(out, ref):
    """Relative error of every (query, head) row [n_q, n_head]."""
    assert np.isfinite(out).all(), "output has NaN/Inf (unwritten or overflowed elements)"
    return np.linalg.norm(out - ref, axis=2) / np.linalg.norm(ref, axis=2)


# The global sets the CPU engine selects for a 40-token prompt of the qwen2-gqa4-q8_0 model of
# test_cuda_model.py (b = 8, w = 16, density 0.3): layer 0 and layer 1, one list per KV head. With GQA 4 the
# second 128-row query tile holds tokens 32-39, whose lo runs 17..24 while every extra lies below 24; the
# layer-1 set of head 0 holds token 17, which queries 33-39 see as an extra and query 32 as a dense key.
GLOBAL_SETS_40 = [
    [[1, 4, 10, 11, 12, 13, 19, 21], [0, 5, 10, 11, 12, 15, 19, 23]],
    [[2, 3, 9, 15, 17, 20, 21, 22], [2, 4, 6, 7, 9, 14, 16, 21]],
]


@pytest.mark.parametrize("sets", GLOBAL_SETS_40, ids=["layer0", "layer1"])
@pytest.mark.parametrize("n_head,d", [(8, 64), (8, 128), (6, 64), (16, 64)])
def test_attention_tca_prefill_40_tokens(sets, n_head, d):
    """The prefill plan of a 40-token prompt (b = 8, w = 16) on which the whole-model GPU run differed from
    the CPU in queries 33-39: every query row must match the CPU semantics, not only the overall norm."""
    rng = np.random.default_rng(40 + n_head + d)
    lo, hi, extras = tca_prefill_plan(40, 0, 40, 8, 16, sets)
    q = (rng.standard_normal((40, n_head, d)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, 2, 40, d)
    out = _core.cuda_attention(q, k, v, lo, hi, extras, 0)
    err = row_errors(out, attention_ref(q, k, v, lo, hi, extras))
    bad = sorted(set(np.nonzero(err > 1e-2)[0].tolist()))
    assert not bad, f"queries {bad} differ (worst {err.max():.3g})"


# (n, n_global, n_new, b, w, n_head, n_head_kv, head_dim, n_split): prompts whose last query tile is partly
# filled and whose rows' lo differ (some capped at L_g), later chunks over compacted tokens (whole tiles of
# extras every row sees), the decode shape (<= 16 packed rows) and forced key splits.
TCA_PREFILL_CASES = [
    (40, 0, 40, 8, 16, 8, 2, 64, 0),
    (41, 0, 41, 8, 16, 8, 2, 64, 0),
    (47, 0, 47, 8, 16, 8, 2, 64, 0),
    (33, 0, 33, 8, 16, 8, 2, 64, 0),
    (100, 0, 100, 8, 16, 8, 2, 64, 0),
    (40, 0, 40, 8, 16, 6, 2, 128, 0),
    (72, 0, 72, 4, 8, 8, 1, 64, 0),
    (161, 0, 161, 16, 32, 4, 4, 128, 0),
    (40, 0, 40, 8, 16, 8, 2, 64, 2),
    (420, 300, 120, 8, 16, 8, 2, 64, 0),
    (700, 500, 40, 32, 64, 8, 2, 128, 3),
    (330, 280, 4, 8, 16, 8, 2, 64, 0),
]


@pytest.mark.parametrize(
    "case", TCA_PREFILL_CASES, ids=lambda c: "n{}_g{}_new{}_b{}_w{}_h{}_kv{}_d{}_s{}".format(*c)
)
def test_attention_tca_prefill_plans(case):
    n, n_global, n_new, b, w, n_head, n_head_kv, d, n_split = case
    rng = np.random.default_rng(sum(case))
    L_g = (n - n_global - w) // b * b
    sets = [random_global_set(rng, L_g, b) for _ in range(n_head_kv)]
    lo, hi, extras = tca_prefill_plan(n, n_global, n_new, b, w, sets)
    q = (rng.standard_normal((n_new, n_head, d)) * 2.0).astype(np.float32)
    k, v = random_kv(rng, n_head_kv, n, d)
    out = _core.cuda_attention(q, k, v, lo, hi, extras, n_split)
    err = row_errors(out, attention_ref(q, k, v, lo, hi, extras))
    bad = sorted(set(np.nonzero(err > 1e-2)[0].tolist()))
    assert not bad, f"queries {bad} differ (worst {err.max():.3g})"


@pytest.mark.parametrize(
    "n_group,d,n,nb,ne,ob,oe", [(4, 128, 1000, 0, 1000, 0, 1000), (3, 64, 517, 40, 500, 300, 420)]
)
def test_group_probs(n_group, d, n, nb, ne, ob, oe):
    rng = np.random.default_rng(n)
    q = (rng.standard_normal((n_group, d)) * 2).astype(np.float32)
    k = rng.uniform(-1, 1, (n, d)).astype(np.float16)
    scale = 1 / np.sqrt(d)
    out = _core.cuda_attention_group_probs(q, k, scale, nb, ne, ob, oe)
    s = q.astype(np.float64) @ k[nb:ne].astype(np.float64).T * scale
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ref = p.mean(axis=0)[ob - nb : oe - nb]
    assert out.shape == (oe - ob,)
    assert rel_err(out, ref) < 1e-4


# ---- quantized weights -------------------------------------------------------------------------------

# type id: (block elements, bytes per block, byte offsets of the fp16 scale fields)
QTYPES = {
    "F16": (1, 32, 64, ()),
    "Q8_0": (8, 32, 34, (0,)),
    "Q4_0": (2, 32, 18, (0,)),
    "Q4_1": (3, 32, 20, (0, 2)),
    "Q5_0": (6, 32, 22, (0,)),
    "Q5_1": (7, 32, 24, (0, 2)),
    "Q5_K": (13, 256, 176, (0, 2)),
    "Q4_K": (12, 256, 144, (0, 2)),
    "Q6_K": (14, 256, 210, (208,)),
}


def random_weight(rng, name, n_out, n_in):
    """Random ggml blocks with small finite fp16 scales: returns (type id, bytes [n_out, row_bytes], fp32)."""
    gguf = pytest.importorskip("gguf")
    type_id, qk, size, scale_offsets = QTYPES[name]
    if name == "F16":
        w = rng.uniform(-1, 1, (n_out, n_in)).astype(np.float16)
        return type_id, w.view(np.uint8).reshape(n_out, -1), w.astype(np.float32)
    raw = rng.integers(0, 256, (n_out, n_in // qk, size), dtype=np.uint8)
    for off in scale_offsets:
        scales = rng.uniform(0.001, 0.02, (n_out, n_in // qk)).astype(np.float16)
        raw[:, :, off : off + 2] = scales.view(np.uint8).reshape(n_out, n_in // qk, 2)
    data = raw.reshape(n_out, -1)
    deq = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(type_id)).astype(np.float32)
    assert deq.shape == (n_out, n_in)
    return type_id, data, deq


def int8_activations(x):
    """x quantized to int8 per 32 values (scale max|x|/127, rounding to nearest even), as float64."""
    xb = x.reshape(-1, 32)
    d = np.abs(xb).max(axis=1, keepdims=True) / np.float32(127)
    return (np.rint(xb / d) * d).reshape(-1).astype(np.float64)


def int8_matvec_reference(name, data, deq, x):
    """What the integer matvec computes: int8 activations against the weights' integers; for Q4_K the
    dmin * min part uses the exact x (through the block sums)."""
    if name != "Q4_K":
        return deq.astype(np.float64) @ int8_activations(x)
    gguf = pytest.importorskip("gguf")
    blocks = data.reshape(data.shape[0], -1, 144).copy()
    blocks[:, :, 16:] = 0  # q = 0 leaves -dmin * min
    mins = -gguf.quants.dequantize(blocks.reshape(data.shape), gguf.GGMLQuantizationType.Q4_K)
    return (deq + mins).astype(np.float64) @ int8_activations(x) - mins.astype(np.float64) @ x


def rms_normed(x, g, eps=1e-5):
    """rms_norm(x) * g in float32, the engine's rule."""
    return (x / np.sqrt(np.mean(x.astype(np.float64) ** 2) + eps) * g).astype(np.float32)


@pytest.mark.parametrize("mode", ["plain", "norm", "add"])
@pytest.mark.parametrize("name", list(QTYPES))
def test_matvec(name, mode):
    """w x; with norm, the product of rms_norm(x) * g from its deferred form (x * g and the sum of squares:
    the fp32 path scales its sums, the integer path normalises while quantizing); with y, added to y."""
    rng = np.random.default_rng(QTYPES[name][0])
    n_out, n_in = 67, 768
    type_id, data, deq = random_weight(rng, name, n_out, n_in)
    x = (rng.standard_normal(n_in) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, n_in).astype(np.float32)
    y0 = rng.standard_normal(n_out).astype(np.float32)
    if mode == "plain":
        y, xr, base = _core.cuda_matvec(type_id, data, n_in, x), x, 0.0
    elif mode == "norm":
        y, xr, base = _core.cuda_matvec(type_id, data, n_in, x, norm=g), rms_normed(x, g), 0.0
    else:
        y, xr, base = _core.cuda_matvec(type_id, data, n_in, x, y=y0), x, y0.astype(np.float64)
    exact = base + deq.astype(np.float64) @ xr
    if name in ("Q8_0", "Q4_K", "Q6_K"):
        # int8 activations (as ggml does): close to the exact product, and equal to the same arithmetic (up
        # to a rare int8 rounding flip when x is normalised on the device in another summation order)
        assert rel_err(y, exact) < 2e-2
        assert rel_err(y, base + int8_matvec_reference(name, data, deq, xr)) < (
            1e-4 if mode == "norm" else 1e-5
        )
    else:
        assert rel_err(y, exact) < 1e-5


@pytest.mark.parametrize(
    "first,second", [("F16", "F16"), ("Q4_K", "Q6_K"), ("Q8_0", "Q4_0"), ("Q5_K", "Q4_K")]
)
def test_matvec_prepares_norm(first, second):
    """A residual product that prepares the next norm (y += w x, then xn = y * g and one partial sum of
    squares per CTA), then a product reading that deferred form: the second product equals the one of
    rms_norm(y) * g; and with 67 rows, a last CTA part empty."""
    rng = np.random.default_rng(QTYPES[first][0] + 3 * QTYPES[second][0])
    n_in, n_mid, n_out = 512, 768, 45
    t1, d1, deq1 = random_weight(rng, first, n_mid, n_in)
    t2, d2, deq2 = random_weight(rng, second, n_out, n_mid)
    x = rng.standard_normal(n_in).astype(np.float32)
    y0 = rng.standard_normal(n_mid).astype(np.float32)
    g = rng.uniform(0.5, 1.5, n_mid).astype(np.float32)
    y, xn, part = _core.cuda_matvec(t1, d1, n_in, x, y=y0, prepare=g)
    assert matvec_expected_err(first, d1, deq1, x, y - y0.astype(np.float64)) < 1e-5
    np.testing.assert_array_equal(xn, y * g)
    rows = 8 if first == "F16" else 4
    assert part.shape == (n_mid // rows,)
    assert abs(part.astype(np.float64).sum() / (y.astype(np.float64) ** 2).sum() - 1) < 1e-5
    out = _core.cuda_matvec(t2, d2, n_mid, xn, part=part)
    assert matvec_expected_err(second, d2, deq2, rms_normed(y, g), out) < 1e-4
    y, xn, part = _core.cuda_matvec(t1, d1[:67], n_in, x, y=y0[:67], prepare=g[:67])
    np.testing.assert_array_equal(xn, y * g[:67])
    assert part.shape == (-(-67 // rows),)
    assert abs(part.astype(np.float64).sum() / (y.astype(np.float64) ** 2).sum() - 1) < 1e-5


def matvec_expected_err(name, data, deq, x, y):
    """Error of y against the exact product, or for the int8-activation types against their arithmetic."""
    if name in ("Q8_0", "Q4_K", "Q6_K"):
        return rel_err(y, int8_matvec_reference(name, data, deq, x))
    return rel_err(y, deq.astype(np.float64) @ x)


@pytest.mark.parametrize(
    "names",
    [("F16", "F16", "F16"), ("Q4_K", "Q4_K", "Q6_K"), ("Q6_K", "Q4_0", "Q4_K"), ("Q8_0", "Q5_1"), ("Q4_1",)],
)
def test_matvec_multi(names):
    """Several products of one input in one call (Q, K, V): row counts that are not multiples of the CTA's
    4 rows, mixed types (one launch per run of equal types), with and without biases."""
    rng = np.random.default_rng(7 + len(names))
    n_in = 512
    x = rng.standard_normal(n_in).astype(np.float32)
    ws, specs = [], []
    for j, name in enumerate(names):
        n_out = [67, 13, 34][j]
        type_id, data, deq = random_weight(rng, name, n_out, n_in)
        bias = rng.standard_normal(n_out).astype(np.float32) if j != 1 else None
        ws.append((type_id, data, bias))
        specs.append((name, data, deq, bias))
    g = rng.uniform(0.5, 1.5, n_in).astype(np.float32)
    ys = _core.cuda_matvec_multi(ws, n_in, x)
    ys_norm = _core.cuda_matvec_multi(ws, n_in, x, norm=g)
    assert len(ys) == len(ys_norm) == len(names)
    for y, y_norm, (name, data, deq, bias) in zip(ys, ys_norm, specs):
        assert y.shape == y_norm.shape == (deq.shape[0],)
        b = bias if bias is not None else 0.0
        assert matvec_expected_err(name, data, deq, x, y - b) < 1e-5
        assert matvec_expected_err(name, data, deq, rms_normed(x, g), y_norm - b) < 1e-4


@pytest.mark.parametrize(
    "names,head_dim,n_head,n_head_kv,n_rot,factors",
    [
        (("F16", "F16", "F16"), 64, 5, 3, 48, False),
        (("Q4_K", "Q4_K", "Q6_K"), 128, 4, 2, 128, True),
        (("Q8_0", "Q8_0", "Q8_0"), 64, 3, 1, 64, False),
    ],
)
def test_matvec_qkv_rope(names, head_dim, n_head, n_head_kv, n_rot, factors):
    """Q/K/V of one token with RoPE (adjacent pairs) and the fp16 K/V store in the matvec epilogue: the
    plain products rotated and stored, whatever the runs of weight types (Q4_K_M's V is Q6_K)."""
    rng = np.random.default_rng(head_dim + n_head)
    n_in, pos, base, scale = 256, 70001, 10000.0, 1.0
    x = rng.standard_normal(n_in).astype(np.float32)
    ws = []
    for name, n_out in zip(names, (n_head * head_dim, n_head_kv * head_dim, n_head_kv * head_dim)):
        type_id, data, _ = random_weight(rng, name, n_out, n_in)
        ws.append((type_id, data, rng.standard_normal(n_out).astype(np.float32)))
    ff = rng.uniform(1, 8, n_rot // 2).astype(np.float32) if factors else None
    g = rng.uniform(0.5, 1.5, n_in).astype(np.float32)
    q, k, v = _core.cuda_matvec_multi(ws, n_in, x, norm=g)
    q_out, k_out, v_out, k_cache, v_cache = _core.cuda_matvec_qkv_rope(
        ws, n_in, x, pos, head_dim, n_rot, base, scale, ff, norm=g
    )
    half = n_rot // 2
    inv = base ** (-2.0 * np.arange(half) / n_rot) * scale / (ff if ff is not None else 1.0)
    c, s = np.cos(pos * inv), np.sin(pos * inv)

    def rotated(t):
        ref = t.reshape(-1, head_dim).astype(np.float64)
        a, b = ref[:, 0:n_rot:2].copy(), ref[:, 1:n_rot:2].copy()
        ref[:, 0:n_rot:2], ref[:, 1:n_rot:2] = a * c - b * s, a * s + b * c
        return ref.reshape(t.shape)

    assert rel_err(q_out, rotated(q)) < 1e-6
    assert rel_err(k_out, rotated(k)) < 1e-6
    np.testing.assert_array_equal(v_out, v)
    np.testing.assert_array_equal(k_cache, k_out.astype(np.float16).reshape(n_head_kv, head_dim))
    np.testing.assert_array_equal(v_cache, v.astype(np.float16).reshape(n_head_kv, head_dim))


@pytest.mark.parametrize("name", ["F16", "Q4_K", "Q6_K", "Q8_0", "Q5_0"])
def test_matvec_swiglu(name):
    rng = np.random.default_rng(60 + QTYPES[name][0])
    n_out, n_in = 45, 768
    tid, gate, gdeq = random_weight(rng, name, n_out, n_in)
    _, up, udeq = random_weight(rng, name, n_out, n_in)
    x = rng.standard_normal(n_in).astype(np.float32)
    norm = rng.uniform(0.5, 1.5, n_in).astype(np.float32)
    for xr, y, tol in [
        (x, _core.cuda_matvec_swiglu(tid, gate, up, n_in, x), 1e-5),
        (rms_normed(x, norm), _core.cuda_matvec_swiglu(tid, gate, up, n_in, x, norm=norm), 1e-4),
    ]:
        if name in ("Q8_0", "Q4_K", "Q6_K"):
            g = int8_matvec_reference(name, gate, gdeq, xr)
            u = int8_matvec_reference(name, up, udeq, xr)
        else:
            g, u = gdeq.astype(np.float64) @ xr, udeq.astype(np.float64) @ xr
        assert rel_err(y, g / (1 + np.exp(-g)) * u) < tol
    _, other, _ = random_weight(rng, name, n_out + 4, n_in)
    with pytest.raises(_core.TcaError, match="gate and up differ"):
        _core.cuda_matvec_swiglu(tid, gate, other, n_in, x)


@pytest.mark.parametrize("name", list(QTYPES))
def test_dequantize_and_get_rows(name):
    rng = np.random.default_rng(100 + QTYPES[name][0])
    n_out, n_in = 19, 512
    type_id, data, deq = random_weight(rng, name, n_out, n_in)
    w16 = _core.cuda_dequantize_f16(type_id, data, n_in)
    assert w16.dtype == np.float16
    np.testing.assert_allclose(w16.astype(np.float32), deq, rtol=1e-3, atol=1e-6)
    ids = np.array([3, 0, 18, 3, 7], np.int32)
    rows = _core.cuda_get_rows(type_id, data, n_in, ids)
    np.testing.assert_allclose(rows, deq[ids], rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not hasattr(_core, "cuda_matmul"), reason="built without cuBLAS")
@pytest.mark.parametrize("name", ["F16", "Q4_K", "Q6_K", "Q8_0"])
def test_matmul_cublas(name):
    rng = np.random.default_rng(200 + QTYPES[name][0])
    n_out, n_in, n_tok = 96, 512, 37
    type_id, data, deq = random_weight(rng, name, n_out, n_in)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    y = _core.cuda_matmul(type_id, data, n_in, x)
    assert y.shape == (n_tok, n_out)
    exact = x.astype(np.float64) @ deq.T.astype(np.float64)
    assert rel_err(y, exact) < 2e-3  # fp16 operands
    y0 = rng.standard_normal((n_tok, n_out)).astype(np.float32)
    assert rel_err(_core.cuda_matmul(type_id, data, n_in, x, y=y0), y0 + exact) < 2e-3  # a residual


def test_matvec_rejects_unsupported_type():
    with pytest.raises(_core.TcaError, match="type id 11"):  # Q3_K
        _core.cuda_matvec(11, np.zeros((1, 110), np.uint8), 256, np.ones(256, np.float32))


# ---- element-wise and row-wise ops -------------------------------------------------------------------


@pytest.mark.parametrize("n_cols", [1000, 999, 4096, 5000])  # float4 rows, scalar rows, > 1024 float4
def test_rms_norm(n_cols):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, n_cols)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, n_cols).astype(np.float32)
    out = _core.cuda_rms_norm(x, g, 1e-5)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + 1e-5) * g
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("adjacent", [True, False])
@pytest.mark.parametrize("with_factors", [True, False])
@pytest.mark.parametrize("n_head_kv", [2, 35])  # 35: two launches of at most 32 KV heads
def test_rope_store(adjacent, with_factors, n_head_kv):
    """RoPE of q and k (n_rot 48 of head_dim 64: the last 16 dims stay) and the fp16 K/V store, one launch."""
    rng = np.random.default_rng(2)
    n_tok, n_head, d, n_rot, base, scale = 9, 5, 64, 48, 500000.0, 0.5
    q = rng.standard_normal((n_tok, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_tok, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_tok, n_head_kv, d)).astype(np.float32)
    pos = rng.integers(0, 130000, n_tok).astype(np.int32)
    ff = rng.uniform(1, 8, n_rot // 2).astype(np.float32) if with_factors else None
    q_out, k_out, k_cache, v_cache = _core.cuda_rope_store(q, k, v, pos, n_rot, base, scale, ff, adjacent)
    half = n_rot // 2
    inv = base ** (-2.0 * np.arange(half) / n_rot) * scale
    if ff is not None:
        inv = inv / ff
    ang = pos[:, None].astype(np.float64) * inv
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    i0 = np.arange(half) * 2 if adjacent else np.arange(half)
    i1 = i0 + 1 if adjacent else i0 + half

    def rotated(t):
        ref = t.astype(np.float64)
        a, b = ref[..., i0].copy(), ref[..., i1].copy()
        ref[..., i0], ref[..., i1] = a * c - b * s, a * s + b * c
        return ref

    assert rel_err(q_out, rotated(q)) < 1e-6
    assert rel_err(k_out, rotated(k)) < 1e-6
    np.testing.assert_array_equal(k_out[..., n_rot:], k[..., n_rot:])
    np.testing.assert_array_equal(k_cache, k_out.astype(np.float16).transpose(1, 0, 2))
    np.testing.assert_array_equal(v_cache, v.astype(np.float16).transpose(1, 0, 2))


def test_swiglu_add_bias():
    rng = np.random.default_rng(4)
    gate = (rng.standard_normal((7, 333)) * 4).astype(np.float32)
    up = rng.standard_normal((7, 333)).astype(np.float32)
    g64 = gate.astype(np.float64)
    assert rel_err(_core.cuda_swiglu(gate, up), g64 / (1 + np.exp(-g64)) * up) < 1e-6
    b = rng.standard_normal(333).astype(np.float32)
    assert rel_err(_core.cuda_add_bias(gate, b), g64 + b) < 1e-7
