"""The engine's forward pass against the NumPy reference (tca.reference), on random and real models."""

import numpy as np
import pytest

from tca import TcaError, _core, reference


def engine_logits(path, tokens, n_ctx=512, n_batch=512, n_threads=2, chunks=None):
    model = _core.Model(path)
    ctx = _core.Context(model, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch)
    if chunks is None:
        return ctx.eval(tokens, logits_all=True)
    out, start = [], 0
    for n in chunks:
        out.append(ctx.eval(tokens[start : start + n], logits_all=True))
        start += n
    return np.concatenate(out)


def relative_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", ["llama-gqa3", "llama-mha-f16", "qwen2-gqa4"])
def test_random_models_match_reference(random_models, name):
    path = random_models[name]
    rng = np.random.default_rng(7)
    n_vocab = _core.Model(path).n_vocab
    tokens = rng.integers(0, n_vocab, size=37).tolist()
    ref = reference.load_model(path).forward(tokens)
    got = engine_logits(path, tokens, n_batch=16)
    assert np.isfinite(got).all()
    assert got.shape == ref.shape
    assert relative_error(got, ref) < 2e-2


def test_chunked_eval_equals_one_batch(random_models):
    """Prompt processing in pieces (KV cache reuse, decode steps) gives the same logits as one batch."""
    path = random_models["qwen2-gqa4"]
    tokens = np.random.default_rng(3).integers(0, 300, size=29).tolist()
    whole = engine_logits(path, tokens)
    pieces = engine_logits(path, tokens, chunks=[11, 1, 1, 9, 7])
    # Short chunks take matmul's small-batch kernels (another summation order): fp32 rounding only.
    assert relative_error(pieces, whole) < 1e-5
    assert np.abs(pieces - whole).max() < 1e-3


def test_smollm2_matches_reference_on_real_text(smollm2_path):
    from tca import fetch

    model = _core.Model(smollm2_path)
    text = fetch.text("pydoc")[20000:22000]
    tokens = model.tokenize(text, add_special=False)[:200]
    ref = reference.load_model(smollm2_path).forward(tokens)
    got = engine_logits(smollm2_path, tokens)
    assert np.isfinite(got).all()
    # Measured 2.3e-4 (fp16 KV cache, fp32 accumulation); 1e-2 still catches any wrong RoPE or layout.
    assert relative_error(got, ref) < 1e-2
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) > 0.98


def test_context_overflow_is_refused_before_touching_the_cache(random_models):
    model = _core.Model(random_models["llama-gqa3"])
    ctx = _core.Context(model, n_ctx=16, n_threads=1)
    ctx.eval(list(range(10)))
    with pytest.raises(TcaError, match="do not fit"):
        ctx.eval(list(range(7)))
    assert ctx.n_past == 10
    with pytest.raises(TcaError, match="out of range"):
        ctx.eval([10**6])
    assert ctx.n_past == 10
