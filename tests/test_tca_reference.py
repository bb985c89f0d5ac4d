"""Properties of the NumPy TCA reference (python/tca/tca_reference.py) against TCA_SPEC.md 4, 5 and 7."""

import math

import numpy as np
import pytest

from tca import tca_reference as ref


def random_config(rng, b, kind):
    """A float32 configuration over the levels of b: 'one_hot', 'dense' or 'random'."""
    n_levels = len(ref.levels(b))
    if kind == "dense":
        return np.eye(n_levels, dtype=np.float32)[-1]
    if kind == "one_hot":
        return np.eye(n_levels, dtype=np.float32)[rng.integers(n_levels)]
    p = rng.dirichlet(np.full(n_levels, 0.7))
    return (p / p.sum()).astype(np.float32)


def random_scores(rng, L):
    """Softmax-like scores: positive, heavy-tailed, sum 1."""
    s = np.exp(rng.normal(0, 2, L))
    return (s / s.sum()).astype(np.float32)


def test_levels():
    assert ref.levels(1).tolist() == [1]
    assert ref.levels(16).tolist() == [1, 2, 4, 8, 16]
    assert len(ref.levels(128)) == 8
    for bad in (0, 3, 24, 1 << 17):
        with pytest.raises(ValueError, match="power of two"):
            ref.levels(bad)


@pytest.mark.parametrize("b", [16, 32, 128])
def test_budget_counts_sum_and_rounding(b):
    rng = np.random.default_rng(b)
    for _ in range(200):
        p = random_config(rng, b, "random")
        n = int(rng.integers(0, 300))
        counts = ref.budget_counts(p, n)
        assert counts.sum() == n
        exact = p.astype(np.float64) / p.astype(np.float64).sum() * n
        assert np.all(counts >= np.floor(exact)) and np.all(counts <= np.ceil(exact))


def test_budget_counts_ties_go_to_the_larger_level():
    p = np.array([0.5, 0.5, 0, 0, 0], dtype=np.float32)
    assert ref.budget_counts(p, 3).tolist() == [1, 2, 0, 0, 0]
    p = np.full(5, 0.2, dtype=np.float32)
    assert ref.budget_counts(p, 2).tolist() == [0, 0, 0, 1, 1]
    assert ref.budget_counts(p, 7).tolist() == [1, 1, 1, 2, 2]


def test_block_scores_formula():
    b, alpha = 8, 0.3
    s = np.array([0.1, 0.0, 0.05, 0.05, 0.0, 0.2, 0.0, 0.0] + [0] * 8 + [1 / 8] * 8, dtype=np.float32)
    h = ref.block_scores(s, b, alpha)
    x = s[:8].astype(np.float64)
    mass = x.sum()
    assert h[0] == pytest.approx((1 - alpha) * mass + alpha * (1 - (x**2).sum() / mass**2), rel=1e-6)
    assert h[1] == 0.0  # a block of mass 0
    assert h[2] == pytest.approx((1 - alpha) * 1.0 + alpha * (1 - 1 / b), rel=1e-6)  # uniform


@pytest.mark.parametrize("b,w", [(16, 16), (16, 40), (32, 64), (64, 64), (128, 512)])
def test_select_properties(b, w):
    rng = np.random.default_rng(b * 1000 + w)
    for kind in ("random", "one_hot", "dense", "random"):
        L = int(w + rng.integers(b, 12 * b))
        s = random_scores(rng, L)
        p = random_config(rng, b, kind)
        alpha = float(rng.choice([0.0, 0.5, 1.0]))
        G = ref.select(s, p, b, w, alpha)
        L_g = ref.global_len(L, b, w)
        n = L_g // b
        assert L_g % b == 0 and w <= L - L_g < w + b
        assert G.dtype == np.int32 and np.all(np.diff(G) > 0) and G.min() >= 0 and G.max() < L_g
        counts = ref.budget_counts(p, n)
        keep = np.bincount(G // b, minlength=n)
        assert keep.min() >= 1  # every block keeps at least one token
        assert sorted(keep.tolist()) == sorted(np.repeat(ref.levels(b), counts).tolist())
        h = ref.block_scores(s[:L_g], b, alpha)
        rank = sorted(range(n), key=lambda j: (-h[j], j))
        assert np.all(keep[rank[: counts[-1]]] == b)  # the best-ranked blocks keep all b
        assert np.all(np.diff(keep[rank]) <= 0)  # better ranked blocks never keep fewer
        for j in range(n):  # each block keeps its top tokens by score
            kept = G[G // b == j] - j * b
            dropped = np.setdiff1d(np.arange(b), kept)
            blk = s[j * b : (j + 1) * b]
            assert len(dropped) == 0 or blk[kept].min() >= blk[dropped].max()


def test_jaccard():
    assert ref.jaccard([], []) == 1.0
    assert ref.jaccard([1, 2, 3], np.array([3, 2, 1])) == 1.0
    assert ref.jaccard([1, 2, 3], [3, 4]) == 0.25


def test_select_ties():
    b, w = 16, 16
    n = 8
    block = np.round(np.random.default_rng(0).random(b), 1).astype(np.float32)  # repeated values
    s = np.tile(block, n + 1) / (n + 1)
    p = np.array([0.5, 0, 0, 0.25, 0.25], dtype=np.float32)  # 4 blocks keep 1, 2 keep 8, 2 keep 16
    G = ref.select(s, p, b, w, 0.5)
    keep = np.bincount(G // b, minlength=n)
    assert keep.tolist() == [16, 16, 8, 8, 1, 1, 1, 1]  # equal blocks: the lower index ranks first
    order = sorted(range(b), key=lambda i: (-block[i], i))
    assert G[G // b == 2].tolist() == sorted(16 * 2 + np.array(order[:8]))
    s = np.full((n + 1) * b, 1 / ((n + 1) * b), dtype=np.float32)  # everything tied
    G = ref.select(s, p, b, w, 0.5)
    assert G.tolist() == list(range(32)) + list(range(32, 40)) + list(range(48, 56)) + [64, 80, 96, 112]


@pytest.mark.parametrize("L,b,w", [(1, 16, 16), (20, 16, 64), (64, 16, 64), (79, 16, 64), (143, 32, 112)])
def test_short_sequences_are_dense(L, b, w):
    rng = np.random.default_rng(L)
    s = random_scores(rng, L)
    p = random_config(rng, b, "one_hot")
    L_g = ref.global_len(L, b, w)
    assert L_g == 0
    G = ref.select(s, p, b, w, 0.5)
    assert len(G) == 0
    assert ref.kept_after_prefill(G, L_g, L).tolist() == list(range(L))
    assert np.array_equal(ref.prefill_mask(L, G, L_g, w), np.tri(L, dtype=bool))


def test_dense_config_keeps_the_global_region():
    rng = np.random.default_rng(1)
    b, w, L = 32, 64, 1000
    G = ref.select(random_scores(rng, L), random_config(rng, b, "dense"), b, w, 0.5)
    L_g = ref.global_len(L, b, w)
    assert G.tolist() == list(range(L_g))
    assert np.array_equal(ref.prefill_mask(L, G, L_g, w), np.tri(L, dtype=bool))


def test_prefill_mask_last_row_is_kept_set():
    rng = np.random.default_rng(2)
    b, w, L = 16, 32, 301
    G = ref.select(random_scores(rng, L), random_config(rng, b, "random"), b, w, 0.5)
    L_g = ref.global_len(L, b, w)
    mask = ref.prefill_mask(L, G, L_g, w)
    assert np.flatnonzero(mask[-1]).tolist() == ref.kept_after_prefill(G, L_g, L).tolist()
    for i in range(L):
        assert np.flatnonzero(mask[i]).tolist() == ref.attended_keys(i, G, L_g, w).tolist()
        assert mask[i, max(0, i - w + 1) : i + 1].all()  # the window is always there


@pytest.mark.parametrize("L,n_head,n_head_kv,d", [(97, 4, 2, 16), (160, 6, 2, 8), (130, 3, 3, 32)])
def test_sparse_attention_equals_gathered_keys(L, n_head, n_head_kv, d):
    rng = np.random.default_rng(L)
    b, w = 16, 32
    Q = rng.normal(0, 1, (L, n_head, d)).astype(np.float32)
    K = rng.normal(0, 1, (L, n_head_kv, d)).astype(np.float32)
    V = rng.normal(0, 1, (L, n_head_kv, d)).astype(np.float32)
    L_g = ref.global_len(L, b, w)
    s = ref.last_scores(Q, K)
    Gs = [ref.select(s[kv], random_config(rng, b, "random"), b, w, 0.5) for kv in range(n_head_kv)]
    masks = np.stack([ref.prefill_mask(L, G, L_g, w) for G in Gs])
    out = ref.dense_attention(Q, K, V, masks)
    assert np.all(np.isfinite(out))
    group = n_head // n_head_kv
    for h in range(n_head):
        kv = h // group
        for i in range(L):
            keys = ref.attended_keys(i, Gs[kv], L_g, w)
            logits = K[keys, kv].astype(np.float64) @ Q[i, h].astype(np.float64) / math.sqrt(d)
            prob = np.exp(logits - logits.max())
            expect = (prob / prob.sum()) @ V[keys, kv].astype(np.float64)
            np.testing.assert_allclose(out[i, h], expect, rtol=1e-10, atol=1e-12)
    dense = ref.dense_attention(Q, K, V, np.tri(L, dtype=bool))
    assert np.abs(out - dense).max() > 1e-3  # the sparse pattern does change the output


def test_scores_are_group_mean_softmax():
    rng = np.random.default_rng(3)
    q = rng.normal(0, 1, (3, 8))
    K = rng.normal(0, 1, (50, 8))
    s = ref.scores(q, K)
    assert s.dtype == np.float32 and s.shape == (50,) and abs(s.sum() - 1) < 1e-6
    rows = [np.exp(K @ qh / math.sqrt(8)) for qh in q]
    np.testing.assert_allclose(s, np.mean([r / r.sum() for r in rows], axis=0), rtol=1e-6)


@pytest.mark.parametrize(
    "L,b,w,kind", [(300, 16, 32, "random"), (40, 16, 64, "one_hot"), (520, 32, 96, "dense")]
)
def test_decode_cache_size_follows_formula(L, b, w, kind):
    rng = np.random.default_rng(L)
    p = random_config(rng, b, kind)
    G = ref.select(random_scores(rng, L), p, b, w, 0.5)
    cache = ref.DecodeCache(G, L, p, b, w)
    assert len(cache) == ref.expected_cache_size(L, L, p, b, w) == len(G) + L - ref.global_len(L, b, w)
    n_compactions = 0
    for pos in range(L, L + w + 5 * b + 7):
        if cache.append(pos):
            before = set(cache.positions().tolist())
            oldest = cache.recent[:b]
            probs = rng.random(b).astype(np.float32)
            kept = cache.compact(probs)
            assert len(kept) == ref.decode_keep(p) and set(kept.tolist()) <= set(oldest)
            assert set(cache.positions().tolist()) == before - (set(oldest) - set(kept.tolist()))
            assert len(cache.recent) == w
            n_compactions += 1
        assert len(cache) == ref.expected_cache_size(L, pos + 1, p, b, w)
        assert np.all(np.diff(cache.positions()) > 0)  # global then recent stay in position order
    assert n_compactions >= 4


def test_decode_keep():
    assert ref.decode_keep(np.array([1, 0, 0, 0, 0], dtype=np.float32)) == 1
    assert ref.decode_keep(np.array([0, 0, 0, 0, 1], dtype=np.float32)) == 16
    assert ref.decode_keep(np.array([0.9, 0.1, 0, 0, 0], dtype=np.float32)) == 1
    assert ref.decode_keep(np.array([0, 0.5, 0, 0.5, 0], dtype=np.float32)) == 5


@pytest.mark.parametrize(
    "L,n_head,n_head_kv,chunk", [(1, 2, 1, 4), (37, 4, 2, 8), (100, 6, 3, 33), (64, 2, 2, 64)]
)
def test_column_means_two_pass_equals_dense(L, n_head, n_head_kv, chunk):
    rng = np.random.default_rng(L + chunk)
    Q = rng.normal(0, 2, (L, n_head, 16)).astype(np.float32)
    K = rng.normal(0, 2, (L, n_head_kv, 16)).astype(np.float32)
    m = ref.column_means(Q, K, chunk=chunk)
    assert m.shape == (n_head_kv, L) and np.all(np.isfinite(m)) and np.all(m > 0)
    np.testing.assert_allclose(m, ref.column_means_dense(Q, K), rtol=1e-12, atol=1e-15)
    # every query row sums to 1, so the column sums (m times the number of queries) total L
    np.testing.assert_allclose((m * (L - np.arange(L))).sum(axis=1), L, rtol=1e-12)


def test_candidates():
    for b in (16, 128):
        c = ref.candidates(b)
        n_levels = len(ref.levels(b))
        assert c.shape == (14, n_levels) and c.dtype == np.float32
        assert np.all(c >= 0) and np.allclose(c.sum(axis=1), 1, atol=1e-6)
        assert c[-1].tolist() == [0] * (n_levels - 1) + [1]
        dens = [ref.density(p, b) for p in c]
        assert np.all(np.diff(dens) > 0) and dens[-1] == 1.0
        ref.check_config(c[0], b)


def test_choose():
    rng = np.random.default_rng(4)
    b, w, L = 16, 32, 400
    Q = rng.normal(0, 2, (L, 2, 16)).astype(np.float32)
    K = rng.normal(0, 2, (L, 1, 16)).astype(np.float32)
    m = ref.column_means(Q, K)[0]
    s = ref.last_scores(Q, K)[0]
    cands = ref.candidates(b)
    L_g = ref.global_len(L, b, w)
    r = [ref.retained(m, ref.kept_after_prefill(ref.select(s, p, b, w, 0.5), L_g, L)) for p in cands]
    assert r[-1] == pytest.approx(1.0) and all(0 < x <= 1 + 1e-12 for x in r)
    assert ref.choose(cands, m, s, b, w, 0.5, 0.0) == 0  # everything qualifies: the sparsest
    assert ref.choose(cands, m, s, b, w, 0.5, 1.5) == len(cands) - 1  # nothing does: dense
    tau = float(np.median(r))
    c = ref.choose(cands, m, s, b, w, 0.5, tau)
    assert r[c] >= tau and all(r[j] < tau for j in range(c))


def test_select_rejects_bad_arguments():
    s = random_scores(np.random.default_rng(5), 100)
    p = np.array([0, 0, 0, 0, 1], dtype=np.float32)
    with pytest.raises(ValueError, match="local window"):
        ref.select(s, p, 16, 8, 0.5)
    with pytest.raises(ValueError, match="levels"):
        ref.select(s, p[:4], 16, 16, 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        ref.select(s, p * 0.9, 16, 16, 0.5)
