"""tca-convert: small random Hugging Face checkpoints of both architectures are converted and run;
their logits must match a NumPy forward pass that follows Hugging Face's conventions (rotate-half RoPE on
the unpermuted weights). SmolLM2 makes a round trip GGUF -> Hugging Face layout -> GGUF."""

import json
import os
import re

import gguf
import numpy as np
import pytest
from hf_factory import MERGES, bpe_vocab, export_gguf, export_tokenizer, make_checkpoint, make_config
from hf_reference import load_model as load_hf

import tca
from tca import reference
from tca.tools import convert_arch
from tca.tools.convert import main as convert_main
from tca.tools.convert_tokenizer import convert_tokenizer
from tca.tools.safetensors_io import SafetensorsFile, SafetensorsWriter, f32_to_bf16, save_file

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# (name, config, tokenizer kind, pre-tokenizer, dtype, shards)
CASES = [
    ("llama-tied-bpe", make_config("llama"), "bpe", "smollm", "BF16", 2),
    (
        "llama31-spm",
        make_config(
            "llama",
            n_vocab=416,
            n_embd=80,
            n_head=4,
            n_head_kv=1,
            head_dim=24,
            tie=False,
            rope_scaling=LLAMA3_SCALING,
            rope_theta=500000.0,
        ),
        "spm",
        None,
        "F32",
        3,
    ),
    (
        "llama-linear",
        make_config(
            "llama", n_head=3, n_head_kv=3, head_dim=32, rope_scaling={"type": "linear", "factor": 2.0}
        ),
        "bpe",
        "gpt-2",
        "F16",
        1,
    ),
    (
        "qwen2-bpe",
        make_config("qwen2", n_embd=64, n_head=4, n_head_kv=2, head_dim=16, tie=False),
        "bpe",
        "qwen2",
        "F16",
        2,
    ),
    ("qwen2-tied", make_config("qwen2", n_layer=3, n_head=6, n_head_kv=3), "bpe", "smollm", "BF16", 2),
]
TOKENS = [5, 270, 3, 99, 17, 281, 200, 44, 1, 150, 271, 63, 8]  # every id < 288


def build(tmp_path, case, out_type="f32"):
    name, config, tokenizer, pre, dtype, shards = case
    ckpt = tmp_path / name
    make_checkpoint(str(ckpt), dict(config), tokenizer, pre or "smollm", dtype, shards, seed=len(name))
    out = tmp_path / f"{name}.{out_type}.gguf"
    assert convert_main([str(ckpt), "-o", str(out), "--type", out_type, "-q"]) == 0
    return ckpt, out


def rel_err(a, b) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


# -- safetensors ------------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
        "c": rng.standard_normal((2, 3, 4)).astype(np.float32),
    }
    for dtype in ("F32", "F16", "BF16"):
        path = tmp_path / f"{dtype}.safetensors"
        save_file(path, arrays, dtype, {"format": "pt"})
        with SafetensorsFile(path) as st:
            assert st.metadata == {"format": "pt"} and st.names() == ["a", "b", "c"]
            for k, v in arrays.items():
                got = st.read_f32(k)
                assert got.shape == v.shape and np.isfinite(got).all()
                tol = {"F32": 0, "F16": 1e-3, "BF16": 8e-3}[dtype]
                np.testing.assert_allclose(got, v, rtol=tol, atol=tol)


def test_bf16_rounding():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.0e38, 1e-40], dtype=np.float32)
    # 1 + 2^-8 is a tie: rounds to even (1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6
    np.testing.assert_array_equal(f32_to_bf16(x)[:3], [0x3F80, 0x3F80, 0x3F82])
    assert f32_to_bf16(np.array([np.nan], dtype=np.float32))[0] == 0x7FC0


def _raw_file(path, header: dict, data: bytes):
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize(
    "header, n_data, message",
    [
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 10, "truncated"),
        ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, 16, "needs 16 bytes"),
        ({"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, 16, "dtype 'I64'"),
        (
            {
                "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            16,
            "overlap",
        ),
        ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "invalid shape"),
    ],
)
def test_safetensors_rejects(tmp_path, header, n_data, message):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, header, bytes(n_data))
    with pytest.raises(tca.TcaError, match=message):
        SafetensorsFile(path)


def test_safetensors_header_checks(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(tca.TcaError, match="over the limit"):
        SafetensorsFile(path)
    path.write_bytes((50).to_bytes(8, "little") + b"{}")
    with pytest.raises(tca.TcaError, match="truncated"):
        SafetensorsFile(path)
    w = SafetensorsWriter(tmp_path / "w.safetensors", [("a", "F32", (2,)), ("b", "F32", (3,))])
    with pytest.raises(tca.TcaError, match="expected tensor 'a'"):
        w.write("b", np.ones(3, np.float32))


# -- conversion vs the Hugging Face forward pass ------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convert_matches_hf(tmp_path, case):
    ckpt, out = build(tmp_path, case, "f32")
    n_vocab = case[1]["vocab_size"]
    tokens = [t % n_vocab for t in TOKENS]
    want = load_hf(str(ckpt)).forward(tokens)
    got = reference.load_model(str(out)).forward(tokens)
    assert got.shape == (len(tokens), n_vocab) and np.isfinite(got).all()
    assert np.std(want) > 0.5  # the random model is far from uniform: the comparison means something
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    r = gguf.GGUFReader(str(out))
    names = {t.name for t in r.tensors}
    assert ("output.weight" in names) == (not case[1]["tie_word_embeddings"])
    assert ("rope_freqs.weight" in names) == (case[1]["rope_scaling"] == LLAMA3_SCALING)
    assert ("blk.0.attn_q.bias" in names) == (case[1]["architectures"] == ["Qwen2ForCausalLM"])


def test_without_permutation_llama_is_wrong(tmp_path, monkeypatch):
    """The comparison above is sensitive to the permutation: skipping it breaks the match."""
    monkeypatch.setattr(convert_arch.LlamaArch, "row_order", lambda self, name: None)
    ckpt, out = build(tmp_path, CASES[0], "f32")
    want = load_hf(str(ckpt)).forward(TOKENS)
    got = reference.load_model(str(out)).forward(TOKENS)
    assert rel_err(got, want) > 0.05


@pytest.mark.parametrize("out_type, tol", [("f16", 1e-5), ("bf16", 1e-2), ("q8_0", 2e-2), ("q4_0", 0.25)])
def test_convert_types(tmp_path, out_type, tol):
    ckpt, out = build(tmp_path, CASES[3], out_type)
    want = load_hf(str(ckpt)).forward(TOKENS)
    got = reference.load_model(str(out)).forward(TOKENS)
    assert np.isfinite(got).all() and rel_err(got, want) < tol
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.bias"] == "F32"
    expected = {"q4_0": "Q8_0"}.get(out_type, out_type.upper())
    assert types["blk.0.ffn_up.weight"] == out_type.upper() and types["output.weight"] == expected


# -- the tokenizer ------------------------------------------------------------------------------------


def _meta(path) -> dict:
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}


def test_bpe_tokenizer_keys(tmp_path):
    _, out = build(tmp_path, CASES[0], "q8_0")
    meta, vocab = _meta(out), bpe_vocab()
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 288 and tokens[: len(vocab)] == list(vocab) and tokens[-1] == "[PAD287]"
    assert meta["tokenizer.ggml.merges"] == [f"{a} {b}" for a, b in MERGES]
    types = meta["tokenizer.ggml.token_type"]
    assert types[:3] == [3, 3, 3] and set(types[3 : len(vocab)]) == {1} and set(types[len(vocab) :]) == {5}
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["llama.attention.head_count_kv"] == 2 and meta["general.file_type"] == 7


def test_spm_tokenizer_keys(tmp_path):
    import sentencepiece

    ckpt, out = build(tmp_path, CASES[1], "f16")
    meta = _meta(out)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    assert meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in meta
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    np.testing.assert_allclose(scores[: sp.vocab_size()], [sp.get_score(i) for i in range(sp.vocab_size())])
    types = meta["tokenizer.ggml.token_type"]
    assert types[:3] == [2, 3, 3] and types[3:259] == [6] * 256
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_space_prefix"] is True


def test_bos_from_post_processor(tmp_path):
    """Llama 3 declares its BOS in tokenizer.json's post-processor, not in tokenizer_config.json."""
    ckpt = tmp_path / "ckpt"
    make_checkpoint(str(ckpt), make_config("llama", n_layer=1), "bpe", "smollm", "F16", 1)
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    template = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}]}
    tok["post_processor"] = {"type": "Sequence", "processors": [{"type": "ByteLevel"}, template]}
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    del cfg["add_bos_token"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    assert convert_main([str(ckpt), "-o", str(out), "-q"]) == 0
    meta = _meta(out)
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False


def test_spm_added_tokens(tmp_path):
    """added_tokens_decoder: ids past the SentencePiece model are appended; old pieces keep their type."""
    ckpt = tmp_path / "ckpt"
    make_checkpoint(str(ckpt), make_config("llama", n_vocab=416, n_layer=1), "spm", None, "F16", 1)
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {
        "0": {"content": "<unk>", "special": True},
        "401": {"content": "<|tool|>", "special": True},
        "402": {"content": "<name>", "special": False},
    }
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "m.gguf"
    assert convert_main([str(ckpt), "-o", str(out), "-q"]) == 0
    meta = _meta(out)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert types[0] == 2 and tokens[400:403] == ["[PAD400]", "<|tool|>", "<name>"]
    assert types[400:403] == [5, 3, 4] and len(tokens) == 416 == len(meta["tokenizer.ggml.scores"])


def test_spm_normalizer_rejected(tmp_path, capsys):
    """A SentencePiece model that normalizes text would tokenize differently in the engine: refused."""
    import sentencepiece

    ckpt = tmp_path / "ckpt"
    make_checkpoint(str(ckpt), make_config("llama", n_vocab=416, n_layer=1), "spm", None, "F16", 1)
    text = ["some text to train on", "and a second line of it"] * 50
    with open(ckpt / "tokenizer.model", "wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(text), model_writer=f, vocab_size=60, model_type="bpe", minloglevel=2
        )
    assert convert_main([str(ckpt), "-o", str(tmp_path / "m.gguf"), "-q"]) == 1
    assert "normalizer 'nmt_nfkc'" in capsys.readouterr().err


@pytest.mark.slow  # gguf-py takes seconds to open a vocabulary of 150k tokens
@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "gpt-2"])
def test_real_bpe_vocab(tmp_path, name):
    """llama.cpp's own vocab files (Llama 3, Qwen2, GPT-2), written out as tokenizer.json the way those
    models declare their pre-tokenizer, convert back to the same keys and the same pre-tokenizer name."""
    fetch = pytest.importorskip("tca.fetch")
    meta = _meta(fetch.vocab_test_files(name)[0])
    export_tokenizer(meta, str(tmp_path), meta["tokenizer.ggml.pre"])
    tokens = meta["tokenizer.ggml.tokens"]
    data, special, _ = convert_tokenizer(str(tmp_path), {}, len(tokens))
    assert data.pre == meta["tokenizer.ggml.pre"] == name
    assert data.tokens == tokens and data.merges == meta["tokenizer.ggml.merges"]
    assert [int(t) for t in data.types] == meta["tokenizer.ggml.token_type"]
    for key in ("bos_token_id", "eos_token_id"):
        assert special[key] == meta[f"tokenizer.ggml.{key}"]


VOCAB_TEXT = "hello world the 12"


def _tokenize(path, text: str) -> list:
    if not hasattr(tca._core, "Vocab"):
        pytest.skip("tca._core.Vocab is not available yet (engine vocab not built)")
    return list(tca._core.Vocab(str(path)).tokenize(text, False, False))


@pytest.mark.parametrize(
    "pre, last", [("smollm", ["Ġ", "1", "2"]), ("gpt-2", ["Ġ", "12"]), ("qwen2", ["Ġ", "1", "2"])]
)
def test_bpe_tokenize(tmp_path, pre, last):
    """Expected ids from the merges: digits split one by one except for plain GPT-2, which merges 1+2."""
    case = ("bpe-" + pre, make_config("llama", n_layer=1), "bpe", pre, "F16", 1)
    _, out = build(tmp_path, case, "f16")
    assert _meta(out)["tokenizer.ggml.pre"] == pre
    vocab = bpe_vocab()
    assert _tokenize(out, VOCAB_TEXT) == [vocab[t] for t in ["hello", "Ġworld", "Ġthe", *last]]


def test_spm_tokenize(tmp_path):
    import sentencepiece

    ckpt, out = build(tmp_path, CASES[1], "f16")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(ckpt / "tokenizer.model"))
    for text in ["Hello world", "def f(x):\n    return x ** 2  # é ü 你好", "  two  spaces"]:
        assert _tokenize(out, text) == sp.encode(text)


# -- the engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[CASES[0][0], CASES[3][0]])
def test_engine_logits(tmp_path, case):
    if not hasattr(tca._core, "Context"):
        pytest.skip("tca._core.Context is not available yet (engine not built)")
    ckpt, out = build(tmp_path, case, "f16")
    want = load_hf(str(ckpt)).forward(TOKENS)
    m = tca._core.Model(str(out))
    c = tca._core.Context(m, n_ctx=256, n_threads=2)
    got = np.asarray(c.eval(TOKENS, logits_all=True))
    assert got.shape == want.shape and np.isfinite(got).all()
    assert rel_err(got, want) < 5e-3


# -- errors -----------------------------------------------------------------------------------------


def _break_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _truncate(ckpt):
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


def _unknown_pre(ckpt):
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated"}
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))


ERRORS = [
    ("missing config", lambda c: (c / "config.json").unlink(), "config.json: missing file"),
    ("missing shard", lambda c: (c / "model-00001-of-00002.safetensors").unlink(), "missing file"),
    (
        "missing tokenizer",
        lambda c: (c / "tokenizer.json").unlink(),
        "missing tokenizer.json or tokenizer.model",
    ),
    (
        "architecture",
        lambda c: _break_config(c, architectures=["GPT2LMHeadModel"]),
        "architecture 'GPT2LMHeadModel' is not supported",
    ),
    ("shape", lambda c: _break_config(c, intermediate_size=128), "has shape \\[160, 96\\] but config.json"),
    (
        "layers",
        lambda c: _break_config(c, num_hidden_layers=3),
        "'model.layers.2.input_layernorm.weight' is missing",
    ),
    ("truncated", _truncate, "truncated"),
    ("pre-tokenizer", _unknown_pre, "unknown pre-tokenizer"),
    ("missing output folder", lambda c: (c.parent / "out").rmdir(), "output folder does not exist"),
    (
        "rope scaling",
        lambda c: _break_config(c, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "rope_scaling type 'yarn' is not supported",
    ),
]


@pytest.mark.parametrize("breaker, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(tmp_path, capsys, breaker, message):
    ckpt = tmp_path / "ckpt"
    make_checkpoint(str(ckpt), make_config("llama"), "bpe", "smollm", "BF16", 2)
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    breaker(ckpt)
    assert convert_main([str(ckpt), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tca-convert: error: ") and "\n" not in err
    assert re.search(message, err), err
    assert not out.parent.exists() or os.listdir(out.parent) == []  # no output, no partial file


# -- round trip on real weights ----------------------------------------------------------------------


def _greedy(model, tokens: list, n: int) -> tuple:
    """Greedy continuation by n tokens -> (all tokens, logits [len - 1, n_vocab] of the last forward)."""
    tokens = list(tokens)
    for _ in range(n):
        logits = model.forward(tokens)
        tokens.append(int(logits[-1].argmax()))
    return tokens, logits


@pytest.mark.slow
def test_smollm2_round_trip(tmp_path):
    """SmolLM2 GGUF -> Hugging Face layout (dequantized, Q/K un-permuted, tokenizer.json rebuilt) -> GGUF.
    F16 must reproduce the original's logits up to F16 rounding and its greedy output; Q8_0 within its
    quantization error. The tokenizer keys must come back identical."""
    fetch = pytest.importorskip("tca.fetch")
    original = fetch.default_model_path()
    ckpt = tmp_path / "smollm2-hf"
    export_gguf(original, str(ckpt))
    pieces = _meta(original)["tokenizer.ggml.tokens"]
    ids = {t: i for i, t in enumerate(pieces)}
    chat = [
        "<|im_start|>",
        "user",
        "Ċ",
        "What",
        "Ġis",
        "Ġthe",
        "Ġcapital",
        "Ġof",
        "ĠFrance",
        "?",
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
    ]
    prompt = [ids[t] for t in chat]
    seq, want = _greedy(reference.load_model(original), prompt, 7)
    answer = seq[len(prompt) :]
    assert "ĠParis" in [pieces[t] for t in answer]
    # the exported checkpoint itself, run the Hugging Face way, already agrees
    assert rel_err(load_hf(str(ckpt)).forward(prompt), want[: len(prompt)]) < 2e-3
    for out_type, tol in (("f16", 2e-3), ("q8_0", 3e-2)):
        out = tmp_path / f"smollm2.{out_type}.gguf"
        assert convert_main([str(ckpt), "-o", str(out), "--type", out_type, "-q"]) == 0
        got = reference.load_model(str(out)).forward(seq[:-1])  # teacher-forced on the greedy answer
        assert np.isfinite(got).all() and rel_err(got, want) < tol, out_type
        greedy = list(got.argmax(-1)[len(prompt) - 1 :])
        if out_type == "f16":
            assert greedy == answer
        else:
            assert np.mean(np.array(greedy) == answer) >= 0.7
        if hasattr(tca._core, "Context"):  # the engine on the converted file
            c = tca._core.Context(tca._core.Model(str(out)), n_ctx=256, n_threads=2)
            logits = np.asarray(c.eval(seq[:-1], logits_all=True))
            assert rel_err(logits, want) < tol + 5e-3, out_type
            if out_type == "f16":
                assert list(logits.argmax(-1)[len(prompt) - 1 :]) == answer
    meta_a, meta_b = _meta(original), _meta(out)
    for key in meta_a:
        if key.startswith(("tokenizer.", "llama.")):
            assert meta_b.get(key) == meta_a[key], key
