"""The C++ TCA selection (engine/tca_select.cpp via tca._core) against the NumPy reference: same sets."""

import time

import numpy as np
import pytest

from tca import TcaError, _core
from tca import tca_reference as ref


def random_config(rng, b):
    n_levels = len(ref.levels(b))
    kind = rng.integers(4)
    if kind == 0:
        return np.eye(n_levels, dtype=np.float32)[-1]  # dense
    if kind == 1:
        return np.eye(n_levels, dtype=np.float32)[rng.integers(n_levels)]
    if kind == 2:
        return ref.candidates(b)[rng.integers(13)]
    p = rng.dirichlet(np.full(n_levels, 0.5))
    return (p / p.sum()).astype(np.float32)


def random_scores(rng, L, b, quantized):
    """Positive scores summing to about 1. quantized: few distinct values (forced ties), some blocks all 0."""
    if not quantized:
        s = np.exp(rng.normal(0, 2, L))
        return (s / s.sum()).astype(np.float32)
    s = rng.integers(0, 4, L).astype(np.float32)
    s[rng.random(L) < 0.5] = 0
    n_blocks = L // b
    zero = rng.choice(n_blocks, size=n_blocks // 3, replace=False) if n_blocks else []
    for j in zero:
        s[j * b : (j + 1) * b] = 0
    if n_blocks > 2:
        s[b : 2 * b] = s[:b]  # two identical blocks: equal h
    s[-1] = 1
    return s / np.float32(s.sum())


def test_cpp_select_equals_reference():
    rng = np.random.default_rng(1234)
    for b in (16, 32, 64, 128):
        for w in sorted({b, 2 * b, max(64, b), 512}):
            for _ in range(6):
                L = int(rng.integers(1, w + 24 * b))
                quantized = bool(rng.integers(2))
                s = random_scores(rng, L, b, quantized)
                p = random_config(rng, b)
                alpha = float(rng.choice([0.0, 0.5, 1.0, 0.3]))
                G_cpp = _core.tca_select(s, p, b, w, alpha)
                G_ref = ref.select(s, p, b, w, alpha)
                assert G_cpp.dtype == np.int32
                assert np.array_equal(G_cpp, G_ref), (b, w, L, quantized, p, alpha)
                L_g = ref.global_len(L, b, w)
                if L_g:
                    h_cpp = _core.tca_block_scores(s[:L_g], b, alpha)
                    assert np.array_equal(h_cpp, ref.block_scores(s[:L_g], b, alpha))
                    assert np.all(np.isfinite(h_cpp))


def test_cpp_budget_counts_equal_reference():
    rng = np.random.default_rng(7)
    for b in (1, 2, 16, 128):
        for _ in range(100):
            p = random_config(rng, b)
            n = int(rng.integers(0, 1000))
            counts = _core.tca_budget_counts(p, n)
            assert counts.sum() == n
            assert np.array_equal(counts, ref.budget_counts(p, n))
    tied = np.full(5, 0.2, dtype=np.float32)
    assert _core.tca_budget_counts(tied, 7).tolist() == ref.budget_counts(tied, 7).tolist() == [1, 1, 1, 2, 2]


def test_cpp_select_dense_cases():
    rng = np.random.default_rng(9)
    b, w = 32, 64
    s = random_scores(rng, 95, b, False)
    assert len(_core.tca_select(s, ref.candidates(b)[0], b, w, 0.5)) == 0  # L < w + b
    s = random_scores(rng, 1000, b, False)
    G = _core.tca_select(s, ref.candidates(b)[-1], b, w, 0.5)
    assert G.tolist() == list(range(ref.global_len(1000, b, w)))


def test_cpp_pick_top():
    rng = np.random.default_rng(11)
    for n in (1, 7, 16, 128):
        for _ in range(20):
            probs = rng.random(n).astype(np.float32)
            if rng.integers(2):
                probs = np.round(probs, 1)  # ties
            t = int(rng.integers(1, n + 1))
            got = _core.tca_pick_top(probs, t)
            assert got.dtype == np.int32 and np.array_equal(got, ref.top_t(probs, t))


def test_cpp_simulate_equals_reference():
    rng = np.random.default_rng(13)
    for b, w, L in [(16, 32, 500), (32, 64, 1500), (64, 64, 100), (128, 512, 3000)]:
        s = random_scores(rng, L, b, bool(rng.integers(2)))
        m = rng.gamma(0.3, 1.0, L).astype(np.float32) + np.float32(1e-6)
        cands = ref.candidates(b)
        r, n_kept = _core.tca_simulate(s, m, cands, b, w, 0.5)
        assert r.shape == n_kept.shape == (14,) and np.all(np.isfinite(r))
        L_g = ref.global_len(L, b, w)
        for c, p in enumerate(cands):
            S = ref.kept_after_prefill(ref.select(s, p, b, w, 0.5), L_g, L)
            assert n_kept[c] == len(S)
            assert r[c] == pytest.approx(ref.retained(m.astype(np.float64), S), rel=1e-12)
        assert r[-1] == pytest.approx(1.0, rel=1e-12)
        assert ref.choose_from(r, cands, b, 0.9) == ref.choose(cands, m.astype(np.float64), s, b, w, 0.5, 0.9)


def test_cpp_rejects_bad_arguments():
    s = random_scores(np.random.default_rng(17), 300, 16, False)
    p = ref.candidates(16)[5]
    with pytest.raises(TcaError, match="power of two"):
        _core.tca_select(s, p, 24, 64, 0.5)
    with pytest.raises(TcaError, match="local window"):
        _core.tca_select(s, p, 16, 8, 0.5)
    with pytest.raises(TcaError, match="alpha"):
        _core.tca_select(s, p, 16, 64, 1.5)
    with pytest.raises(TcaError, match="levels"):
        _core.tca_select(s, p[:4], 16, 64, 0.5)
    with pytest.raises(TcaError, match="sums to"):
        _core.tca_select(s, p * 0.99, 16, 64, 0.5)
    bad = p.copy()
    bad[0] = np.nan
    with pytest.raises(TcaError, match="entry 0"):
        _core.tca_select(s, bad, 16, 64, 0.5)
    bad = s.copy()
    bad[7] = -1
    with pytest.raises(TcaError, match=r"scores\[7\]"):
        _core.tca_select(bad, p, 16, 64, 0.5)
    with pytest.raises(TcaError, match="top 5 of 4"):
        _core.tca_pick_top(np.ones(4, dtype=np.float32), 5)
    with pytest.raises(TcaError, match="candidate 1"):
        _core.tca_simulate(s, s, np.stack([p, p * 2]), 16, 64, 0.5)
    with pytest.raises(TcaError, match="column means"):
        _core.tca_simulate(s, s[:-1], np.stack([p]), 16, 64, 0.5)


def test_cpp_select_is_fast_on_long_contexts():
    rng = np.random.default_rng(19)
    L, b, w = 131072, 128, 4096
    s = random_scores(rng, L, b, False)
    p = ref.candidates(b)[6]
    t0 = time.perf_counter()
    G = _core.tca_select(s, p, b, w, 0.5)
    elapsed = time.perf_counter() - t0
    expected = int(np.sum(ref.budget_counts(p, ref.global_len(L, b, w) // b) * ref.levels(b)))
    assert len(G) == expected
    assert elapsed < 0.5, f"selection over {L} tokens took {elapsed:.3f} s"


@pytest.mark.parametrize(
    "L,n_head,n_head_kv,d", [(1, 2, 1, 8), (17, 4, 2, 16), (100, 6, 2, 64), (257, 3, 3, 32), (211, 6, 3, 64)]
)
def test_cpp_calibration_statistics_equal_reference(L, n_head, n_head_kv, d):
    rng = np.random.default_rng(L * 10 + n_head)
    Q = rng.normal(0, 2, (L, n_head, d)).astype(np.float32)
    K = rng.normal(0, 2, (L, n_head_kv, d)).astype(np.float32)
    m, s = _core.tca_calib_layer(Q, K)
    assert m.shape == s.shape == (n_head_kv, L) and m.dtype == s.dtype == np.float32
    m3, s3 = _core.tca_calib_layer(Q, K, n_threads=3)
    assert np.array_equal(m, m3) and np.array_equal(s, s3)  # independent of the thread count
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(s))
    np.testing.assert_allclose(m, ref.column_means(Q, K, chunk=37), rtol=2e-5)
    np.testing.assert_allclose(s, ref.last_scores(Q, K), rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)


def test_cpp_calibration_end_to_end_choice():
    rng = np.random.default_rng(23)
    L, b, w = 700, 16, 64
    Q = rng.normal(0, 2, (L, 4, 16)).astype(np.float32)
    K = rng.normal(0, 2, (L, 2, 16)).astype(np.float32)
    m, s = _core.tca_calib_layer(Q, K)
    m_ref, s_ref = ref.column_means(Q, K), ref.last_scores(Q, K)
    cands = ref.candidates(b)
    for kv in range(2):
        r, n_kept = _core.tca_simulate(s[kv], m[kv], cands, b, w, 0.5)
        L_g = ref.global_len(L, b, w)
        assert n_kept[-1] == L and np.all(n_kept >= L - L_g + L_g // b)  # every block keeps >= 1
        checked = 0
        for tau in (0.5, 0.8, 0.95):
            if np.min(np.abs(r - tau)) > 1e-3:  # a choice right at the threshold may flip with rounding
                expect = ref.choose(cands, m_ref[kv], s_ref[kv], b, w, 0.5, tau)
                assert ref.choose_from(r, cands, b, tau) == expect
                checked += 1
        assert checked >= 2


def test_cpp_calibration_rejects_bad_input():
    Q = np.ones((10, 4, 8), dtype=np.float32)
    with pytest.raises(TcaError, match="bad attention shape"):
        _core.tca_calib_layer(Q, np.ones((10, 3, 8), dtype=np.float32))
    with pytest.raises(TcaError, match="must be"):
        _core.tca_calib_layer(Q, np.ones((10, 2, 4), dtype=np.float32))
    with pytest.raises(TcaError, match="n_threads"):
        _core.tca_calib_layer(Q, np.ones((10, 2, 8), dtype=np.float32), n_threads=0)
    bad = Q.copy()
    bad[3, 1, 2] = np.inf
    with pytest.raises(TcaError, match="Q has a non-finite"):
        _core.tca_calib_layer(bad, np.ones((10, 2, 8), dtype=np.float32))
