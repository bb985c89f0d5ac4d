"""tca._core.Sampler against a NumPy implementation of the same chain (llama.cpp's default order:
penalties -> top-k -> top-p -> min-p -> temperature -> draw)."""

import math

import numpy as np
import pytest

from tca import TcaError
from tca._core import Sampler


def reference_probs(
    logits,
    history=(),
    temperature=0.8,
    top_k=40,
    top_p=0.95,
    min_p=0.05,
    repeat_penalty=1.0,
    repeat_last_n=64,
    presence_penalty=0.0,
    frequency_penalty=0.0,
):
    """The distribution the sampler draws from, [n_vocab], zero outside the survivors."""
    n_vocab = logits.shape[0]
    x = logits.astype(np.float32).copy()
    if repeat_last_n != 0:
        window = list(history) if repeat_last_n < 0 else list(history)[-repeat_last_n:]
        ids, counts = np.unique([t for t in window if 0 <= t < n_vocab], return_counts=True)
        for t, c in zip(ids, counts):
            x[t] = x[t] * np.float32(repeat_penalty) if x[t] <= 0 else x[t] / np.float32(repeat_penalty)
            x[t] -= np.float32(c * frequency_penalty + presence_penalty)
    out = np.zeros(n_vocab)
    if temperature <= 0:
        out[int(np.argmax(x))] = 1.0
        return out
    order = np.lexsort((np.arange(n_vocab), -x))  # by logit descending, ties to the lower id
    order = order[np.isfinite(x[order])]
    if 0 < top_k < len(order):
        order = order[:top_k]
    s = x[order].astype(np.float64)
    if top_p < 1:
        p = np.exp(s - s[0])
        p /= p.sum()
        reached = np.nonzero(np.cumsum(p) >= top_p)[0]
        keep = reached[0] + 1 if len(reached) else len(order)
        order, s = order[:keep], s[:keep]
    if min_p > 0:
        keep = s >= np.float32(s[0] + np.float32(math.log(min_p)))
        order, s = order[keep], s[keep]
    p = np.exp((s - s[0]) / temperature)
    out[order] = p / p.sum()
    return out


def random_logits(rng, n_vocab, scale=3.0):
    return (rng.standard_normal(n_vocab) * scale).astype(np.float32)


SETTINGS = [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.5, top_k=7, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2),
    dict(temperature=2.0, top_k=100, top_p=0.9, min_p=0.01),
    dict(temperature=0.0, top_k=40, top_p=0.95, min_p=0.05),
]


@pytest.mark.parametrize("n_vocab", [1, 7, 1000, 49152])
@pytest.mark.parametrize("settings", SETTINGS)
def test_probs_match_numpy(n_vocab, settings):
    rng = np.random.default_rng(n_vocab)
    for _ in range(3):
        logits = random_logits(rng, n_vocab)
        got = Sampler(seed=1, **settings).probs(logits)
        want = reference_probs(logits, **settings)
        assert got.shape == (n_vocab,)
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got > 0, want > 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert abs(got.sum() - 1.0) < 1e-5


@pytest.mark.parametrize(
    "penalties",
    [
        dict(repeat_penalty=1.3, repeat_last_n=64),
        dict(repeat_penalty=1.0, presence_penalty=0.7, repeat_last_n=8),
        dict(repeat_penalty=1.1, frequency_penalty=0.4, presence_penalty=0.2, repeat_last_n=-1),
        dict(repeat_penalty=2.0, repeat_last_n=0),
    ],
)
def test_penalties_match_numpy(penalties):
    rng = np.random.default_rng(7)
    n_vocab = 300
    history = [int(t) for t in rng.integers(0, 40, size=100)] + [5, 5, 5, -1, 10_000]
    logits = random_logits(rng, n_vocab, scale=2.0)
    settings = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, **penalties)
    s = Sampler(seed=3, **settings)
    for t in history:
        s.accept(t)
    want = reference_probs(logits, history=history, **settings)
    np.testing.assert_allclose(s.probs(logits), want, rtol=1e-5, atol=1e-7)
    if penalties["repeat_last_n"] != 0:
        assert not np.allclose(want, reference_probs(logits, **settings))


def test_repeat_penalty_lowers_seen_tokens():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    s = Sampler(seed=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=2.0)
    before = s.probs(logits)
    s.accept(0)
    s.accept(1)
    after = s.probs(logits)
    assert after[0] < before[0] and after[1] < before[1]
    assert after[2] > before[2] and after[3] > before[3]
    s.reset()
    np.testing.assert_allclose(s.probs(logits), before, rtol=1e-6)


def test_greedy_is_argmax():
    rng = np.random.default_rng(11)
    for n_vocab in [1, 2, 33, 49152]:
        logits = random_logits(rng, n_vocab)
        for settings in [dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=0.7, top_k=1)]:
            assert Sampler(seed=5, **settings).sample(logits) == int(np.argmax(logits))


def chi_square_bound(df):
    """The 0.999 quantile of chi-square(df), Wilson-Hilferty approximation (z = 3.09)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + 3.09 * math.sqrt(a)) ** 3


@pytest.mark.parametrize("settings", SETTINGS[:6])
def test_frequencies_follow_probs(settings):
    rng = np.random.default_rng(21)
    logits = random_logits(rng, 200, scale=1.5)
    s = Sampler(seed=1234, **settings)
    p = s.probs(logits)
    n = 20000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=200)
    assert np.all(counts[p == 0] == 0), "drew a filtered token"
    support = p > 0
    expected = p[support] * n
    # Pool the rare outcomes so that every cell expects at least 5 draws.
    rare = expected < 5
    observed = np.append(counts[support][~rare], counts[support][rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    df = len(expected) - 1
    if df == 0:
        return
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_bound(df), (chi2, df)


def test_seed_determinism():
    rng = np.random.default_rng(3)
    rows = [random_logits(rng, 5000, scale=1.0) for _ in range(50)]

    def draw(seed):
        s = Sampler(seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
        return [s.sample(r) for r in rows]

    a, b, c = draw(42), draw(42), draw(43)
    assert a == b
    assert a != c
    s = Sampler(seed=42, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    first = [s.sample(r) for r in rows]
    s.reset()
    assert [s.sample(r) for r in rows] == first == a


def pcg32_units(seed, n):
    """The sampler's generator written out in Python: PCG32 (XSH-RR), 53-bit uniforms."""
    mask = (1 << 64) - 1
    inc = ((0xDA3E39CB94B95BDB << 1) | 1) & mask
    state = 0

    def next_u32():
        nonlocal state
        old = state
        state = (old * 6364136223846793005 + inc) & mask
        shift = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((shift >> rot) | (shift << ((32 - rot) & 31))) & 0xFFFFFFFF

    next_u32()
    state = (state + seed) & mask
    next_u32()
    return [(((next_u32() >> 5) << 26) | (next_u32() >> 6)) / 2.0**53 for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 12345])
def test_seed_sequence_is_portable(seed):
    """Equal logits over 2^16 tokens make each draw floor(u * 2^16): the generator is exactly PCG32."""
    n_vocab = 1 << 16
    logits = np.full(n_vocab, 0.5, dtype=np.float32)
    s = Sampler(seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    draws = [s.sample(logits) for _ in range(8)]
    assert draws == [int(u * n_vocab) for u in pcg32_units(seed, 8)]


def test_handles_infinite_logits():
    logits = np.array([-np.inf, 1.0, -np.inf, 0.5], dtype=np.float32)
    s = Sampler(seed=9, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    p = s.probs(logits)
    assert p[0] == 0 and p[2] == 0 and np.all(np.isfinite(p))
    assert all(s.sample(logits) in (1, 3) for _ in range(50))


@pytest.mark.parametrize(
    "logits",
    [
        np.array([1.0, np.nan, 0.0], dtype=np.float32),
        np.full(4, -np.inf, dtype=np.float32),
        np.zeros(0, dtype=np.float32),
        np.ones((2, 3), dtype=np.float32),
    ],
)
def test_bad_logits_raise(logits):
    with pytest.raises(TcaError):
        Sampler(seed=0).sample(logits)


def test_bad_params_raise():
    with pytest.raises(TcaError, match="repeat_penalty"):
        Sampler(seed=0, repeat_penalty=0.0)
    with pytest.raises(TcaError, match="top_p"):
        Sampler(seed=0, top_p=-0.5)
