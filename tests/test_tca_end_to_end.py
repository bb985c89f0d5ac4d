"""Issue 3 end to end: SmolLM2 calibrated with a small block and window, asked about a fact that lies far
outside the window of a long prompt, answers it with TCA while holding well under dense KV memory."""

import numpy as np
import pytest

from tca import Engine, fetch
from tca.tools import calibrate

# Measured on this prompt (876 tokens): b=32, w=128, tau=0.8 keeps 0.60 of the dense KV and answers;
# b=16, w=64 answers at tau 0.9 (0.79 kept) but not at 0.85 (0.64); b=32, w=256, tau 0.8 (0.57) does not.
B, W, TAU = 32, 128, 0.8


@pytest.fixture(scope="module")
def calibrated_smollm2(smollm2_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tca") / "smollm2-tca.gguf")
    argv = ["-m", smollm2_path, "-o", out, "--ctx", "2048", "-b", str(B), "-w", str(W), "--tau", str(TAU)]
    assert calibrate.main([*argv, "-t", "2"]) == 0
    return out


def needle_messages():
    filler = fetch.text("pydoc")[30000:33500]
    doc = "Remember this: the name of the captain's dog is Biscuit.\n\n" + filler
    question = "\n\nQuestion: What is the name of the captain's dog?"
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": doc + question},
    ]


@pytest.mark.parametrize("attention", ["dense", "tca"])
def test_calibrated_tca_finds_a_fact_outside_the_window(calibrated_smollm2, attention):
    llm = Engine(calibrated_smollm2, n_ctx=2048, n_threads=2, attention=attention)
    out = llm.create_chat_completion(needle_messages(), temperature=0, max_tokens=16)
    answer = out["choices"][0]["message"]["content"]
    n_prompt = out["usage"]["prompt_tokens"]
    assert n_prompt > 6 * W, "the fact must lie far outside the window"
    assert "Biscuit" in answer, answer
    stats = llm.ctx.kv_stats()
    share = stats["bytes"] / stats["dense_bytes"]
    if attention == "tca":
        assert share < 0.7, f"TCA holds {share:.2f} of the dense KV bytes"
    else:
        assert share >= 0.98
    assert np.isfinite(share)
