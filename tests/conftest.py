"""Shared fixtures: the real default model (fetched and cached by tca.fetch) and small random models."""

import os
import sys
from pathlib import Path

# One BLAS thread: the reference computations are small, and threaded BLAS is far slower on 2 busy cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smollm2_path():
    from tca import fetch

    return fetch.default_model_path()


@pytest.fixture(scope="session")
def random_models(tmp_path_factory):
    """Small random models of both architectures with awkward shapes, written once per session."""
    import factory

    root = tmp_path_factory.mktemp("models")
    specs = {
        "llama-gqa3": dict(arch="llama", n_layer=2, n_embd=96, n_head=6, n_head_kv=2, n_ff=160, n_vocab=300),
        "llama-mha-f16": dict(
            arch="llama", n_layer=2, n_embd=64, n_head=2, n_head_kv=2, n_ff=96, n_vocab=290, tensor_type="F16"
        ),
        "qwen2-gqa4": dict(
            arch="qwen2", n_layer=3, n_embd=128, n_head=8, n_head_kv=2, n_ff=224, n_vocab=320, tied=False
        ),
    }
    paths = {}
    for name, spec in specs.items():
        path = root / f"{name}.gguf"
        factory.write_random_model(str(path), seed=len(paths) + 1, **spec)
        paths[name] = str(path)
    return paths
