"""TCA in the engine (spec sections 4-5): the CPU attention core against attention under the equivalent
boolean mask, and whole models with sparse prefill and compacting decode against the NumPy reference."""

import numpy as np
import pytest
from tca_model_reference import TcaAttention

from tca import TcaError, _core, reference
from tca import tca_reference as tr


def masked_attention(q, k, v, mask):
    """q [n_q, H, d]; k, v [n_k, Hkv, d] (rounded to fp16 like the cache); mask [Hkv, n_q, n_k]."""
    k = k.astype(np.float16).astype(np.float64)
    v = v.astype(np.float16).astype(np.float64)
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for h in range(q.shape[1]):
        g = h // group
        logits = q[:, h].astype(np.float64) @ k[:, g].T / np.sqrt(q.shape[2])
        logits = np.where(mask[g], logits, -np.inf)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v[:, g]
    return out


@pytest.mark.parametrize(
    "n_q,n_k,n_head,n_head_kv,d",
    [
        (1, 1500, 4, 1, 64),
        (1, 700, 8, 2, 128),
        (13, 45, 6, 2, 64),
        (33, 97, 4, 4, 80),
        (7, 300, 8, 1, 128),
        (9, 150, 4, 2, 64),
        (5, 203, 4, 2, 128),
        (3, 77, 2, 2, 64),
    ],
)
def test_attention_core_equals_masked_attention(n_q, n_k, n_head, n_head_kv, d):
    rng = np.random.default_rng(n_q * 1000 + n_k)
    q = rng.standard_normal((n_q, n_head, d)).astype(np.float32)
    k = rng.standard_normal((n_k, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_k, n_head_kv, d)).astype(np.float32)
    hi = np.sort(rng.integers(1, n_k + 1, size=(n_head_kv, n_q)), axis=1)
    lo = (hi * rng.uniform(0, 1, size=hi.shape)).astype(np.int64)
    extra = [
        np.sort(rng.choice(n_k, size=rng.integers(0, n_k // 3 + 1), replace=False)) for _ in range(n_head_kv)
    ]
    mask = np.zeros((n_head_kv, n_q, n_k), dtype=bool)
    for g in range(n_head_kv):
        for i in range(n_q):
            mask[g, i, lo[g, i] : hi[g, i]] = True
            mask[g, i, extra[g][extra[g] < lo[g, i]]] = True
            if not mask[g, i].any():  # the core requires at least one key per query
                lo[g, i] = hi[g, i] - 1
                mask[g, i, hi[g, i] - 1] = True
    got = _core.attention(q, k, v, lo, hi, [e.astype(np.int32).tolist() for e in extra], n_threads=2)
    want = masked_attention(q, k, v, mask)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def run_engine(path, tokens, chunks, **tca):
    model = _core.Model(path)
    ctx = _core.Context(model, n_ctx=256, n_threads=2, **tca)
    logits, start = [], 0
    for size in chunks:
        logits.append(ctx.eval(tokens[start : start + size], logits_all=True))
        start += size
    return np.concatenate(logits), ctx


# Prompt then decode steps; and chat turns: later prompt chunks on a cache already compacted.
DECODE = [90] + [1] * 40
CHAT = [70] + [1] * 12 + [31] + [1] * 9 + [2] + [1] * 3 + [25]


@pytest.mark.parametrize(
    "name,b,w,density,alpha,chunks",
    [
        ("llama-gqa3", 8, 16, 0.3, 0.5, DECODE),
        ("qwen2-gqa4", 4, 8, 0.5, 0.0, DECODE),
        ("llama-mha-f16", 16, 16, 0.15, 1.0, DECODE),
        ("llama-gqa3", 8, 16, 0.3, 0.5, CHAT),
        ("qwen2-gqa4", 4, 8, 0.5, 0.0, CHAT),
    ],
)
def test_tca_model_equals_reference(random_models, name, b, w, density, alpha, chunks):
    """Sparse prefill, decode steps with compaction and later prompt chunks: logits and the kept
    positions of every head."""
    path = random_models[name]
    tokens = np.random.default_rng(5).integers(0, 280, size=sum(chunks)).tolist()
    tca = dict(attention="tca", tca_block=b, tca_window=w, tca_alpha=alpha, tca_density=density)
    got, ctx = run_engine(path, tokens, chunks, **tca)
    ref_attn = TcaAttention(ctx.tca_settings["head_config"], chunks, b, w, alpha)
    want = reference.load_model(path).forward(tokens, attention_fn=ref_attn)
    dense = reference.load_model(path).forward(tokens)
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert np.isfinite(got).all()
    assert err < 2e-3
    # The check can fail: TCA really differs from dense attention here.
    assert np.linalg.norm(dense - want) / np.linalg.norm(want) > 20 * err
    for il, heads in ref_attn.kept.items():
        for g, positions in enumerate(heads):
            assert ctx.kv_head_positions(il, g).tolist() == positions.tolist()


def test_cache_sizes_follow_the_formula(random_models):
    path = random_models["llama-gqa3"]
    b, w, density, n_prompt = 8, 16, 0.25, 100
    model = _core.Model(path)
    ctx = _core.Context(
        model, n_ctx=512, n_threads=2, attention="tca", tca_block=b, tca_window=w, tca_density=density
    )
    ctx.eval(list(range(n_prompt)))
    p = ctx.tca_settings["head_config"][0, 0]
    for n_past in range(n_prompt, n_prompt + 20 * b + 5):
        heads = ctx.kv_head_tokens()
        assert (heads[..., 0] == tr.expected_cache_size(n_prompt, n_past, p, b, w)).all()
        ctx.eval([n_past % 250])
    stats = ctx.kv_stats()
    assert stats["tokens"] == ctx.kv_head_tokens()[..., 0].sum()
    # The reported bytes are what the heads hold: their tokens plus less than one 64-token growth step each.
    per_token = stats["dense_bytes"] // stats["dense_tokens"]
    n_heads = model.n_layer * model.n_head_kv
    assert stats["tokens"] * per_token <= stats["bytes"] < (stats["tokens"] + 64 * n_heads) * per_token
    assert stats["bytes"] < 0.7 * stats["dense_bytes"]


@pytest.mark.parametrize(
    "settings",
    [dict(tca_density=1.0, tca_block=8, tca_window=16), dict(tca_density=0.2, tca_block=8, tca_window=64)],
)
def test_tca_equals_dense_when_all_dense_or_short(random_models, settings):
    """All heads dense (density 1), or a prompt no longer than the window: exactly dense attention."""
    path = random_models["qwen2-gqa4"]
    tokens = np.random.default_rng(9).integers(0, 300, size=60).tolist()
    chunks = [50] + [1] * 10
    dense, _ = run_engine(path, tokens, chunks)
    tca, ctx = run_engine(path, tokens, chunks, attention="tca", **settings)
    np.testing.assert_allclose(tca, dense, rtol=1e-5, atol=1e-5)


def test_tca_needs_configuration(random_models):
    model = _core.Model(random_models["llama-gqa3"])
    with pytest.raises(TcaError, match="tca-density"):
        _core.Context(model, attention="tca")
    with pytest.raises(TcaError, match="power of two"):
        _core.Context(model, attention="tca", tca_density=0.5, tca_block=12, tca_window=64)
    with pytest.raises(TcaError, match="window"):
        _core.Context(model, attention="tca", tca_density=0.5, tca_block=64, tca_window=32)
