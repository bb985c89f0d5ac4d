"""Hugging Face tokenizer files -> GGUF tokenizer keys.

- tokenizer.json with a byte-level BPE model -> `tokenizer.ggml.model = gpt2`: tokens, merges, token types
  and the pre-tokenizer name.
- otherwise tokenizer.model (SentencePiece BPE) -> `tokenizer.ggml.model = llama`: tokens, scores, types.
- tokenizer_config.json: special tokens, add_bos/add_eos and the chat template, for both.

How the pre-tokenizer is identified: llama.cpp hashes the tokenization of a fixed text, which needs the
Hugging Face `tokenizers` library. Here it is identified from the pre-tokenizer description stored in
tokenizer.json (its steps and their regex patterns), looked up in PRE_TOKENIZERS; anything not in the
table is an error that prints the description, so a new tokenizer is added by one table row.
"""

import json
import os

import gguf

from tca import TcaError

# The GPT-2 split, used by a ByteLevel step with use_regex=true.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Pre-tokenizer steps (as described by `pre_tokenizer_steps`) -> llama.cpp's `tokenizer.ggml.pre`.
PRE_TOKENIZERS = {
    ("split:" + GPT2_PATTERN,): "gpt-2",
    ("digits:individual", "split:" + GPT2_PATTERN): "smollm",  # StarCoder's split, as in SmolLM/SmolLM2
    ("split:" + LLAMA3_PATTERN,): "llama-bpe",
    ("split:" + QWEN2_PATTERN,): "qwen2",
}


def pre_tokenizer_steps(pre: dict, path: str) -> tuple:
    """The pre-tokenizer as a tuple of steps: "split:<regex>" or "digits[:individual]"; the final
    ByteLevel step is folded in (its built-in GPT-2 split when use_regex is set)."""
    if pre is None:
        raise TcaError(f"{path}: a byte-level BPE tokenizer without a pre_tokenizer is not supported")
    items = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    steps = []
    for item in items:
        kind = item.get("type")
        if kind == "ByteLevel":
            if item.get("use_regex", True):
                steps.append("split:" + GPT2_PATTERN)
        elif kind == "Split":
            pattern = item.get("pattern", {})
            if "Regex" not in pattern or item.get("behavior") != "Isolated" or item.get("invert", False):
                raise TcaError(f"{path}: unsupported Split pre-tokenizer {json.dumps(item)}")
            steps.append("split:" + pattern["Regex"])
        elif kind == "Digits":
            steps.append("digits:individual" if item.get("individual_digits") else "digits")
        else:
            raise TcaError(f"{path}: unsupported pre-tokenizer step {kind!r}")
    return tuple(steps)


def _token_content(value):
    """A special token in tokenizer_config.json: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TcaError(f"{path}: not valid JSON: {e}") from None


def is_byte_level_bpe(tok_json: dict) -> bool:
    model = tok_json.get("model") or {}
    decoder = tok_json.get("decoder") or {}
    return model.get("type") == "BPE" and decoder.get("type") == "ByteLevel"


class TokenizerData:
    """What the GGUF stores about the tokenizer."""

    def __init__(self, model: str, tokens: list, types: list):
        self.model, self.tokens, self.types = model, tokens, types
        self.pre, self.merges, self.scores = None, None, None
        self.add_space_prefix = False

    def write(self, w: gguf.GGUFWriter, special: dict, chat_template) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges is not None:
            w.add_token_merges(self.merges)
        w.add_add_space_prefix(self.add_space_prefix)
        for key, value in special.items():
            getattr(w, f"add_{key}")(value)
        if chat_template:
            w.add_chat_template(chat_template)


def _pad_vocab(tokens: list, types: list, n_vocab: int, path: str) -> None:
    """Checkpoints often have more embedding rows than tokens: the extra ids become unused tokens."""
    if len(tokens) > n_vocab:
        raise TcaError(
            f"{path}: the tokenizer has {len(tokens)} tokens but config.json vocab_size is {n_vocab}"
        )
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)


def _bpe_tokenizer(path: str, tok_json: dict, n_vocab: int) -> TokenizerData:
    model = tok_json["model"]
    vocab = model.get("vocab") or {}
    by_id = {i: t for t, i in vocab.items()}
    specials = {}
    for added in tok_json.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        specials[added["id"]] = added.get("special", False)
    n_tokens = max(by_id) + 1 if by_id else 0
    if n_tokens > n_vocab:
        raise TcaError(f"{path}: token id {n_tokens - 1} is outside config.json vocab_size {n_vocab}")
    tokens, types = [], []
    for i in range(n_tokens):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in specials:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if specials[i] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    _pad_vocab(tokens, types, n_vocab, path)
    data = TokenizerData("gpt2", tokens, types)
    # Merges are "a b" strings, or [a, b] pairs in newer files; byte-level tokens hold no spaces.
    data.merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    steps = pre_tokenizer_steps(tok_json.get("pre_tokenizer"), path)
    if steps not in PRE_TOKENIZERS:
        raise TcaError(
            f"{path}: unknown pre-tokenizer {json.dumps(tok_json.get('pre_tokenizer'))}; "
            "add its steps to PRE_TOKENIZERS in tools/convert_tokenizer.py"
        )
    data.pre = PRE_TOKENIZERS[steps]
    return data


def _proto_fields(buf: bytes):
    """Yields (field number, value) of a protobuf message: ints for varints, bytes for length-delimited.
    Enough to read two flags of a SentencePiece model without the protobuf package."""
    pos = 0

    def varint():
        nonlocal pos
        value, shift = 0, 0
        while True:
            if pos >= len(buf):
                raise TcaError("tokenizer.model: truncated protobuf")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, varint()
        elif wire == 2:
            n = varint()
            yield field, buf[pos : pos + n]
            pos += n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise TcaError(f"tokenizer.model: unsupported protobuf wire type {wire}")


def _spm_spec(path: str) -> tuple:
    """(model_type, normalizer name, add_dummy_prefix, remove_extra_whitespaces) of a SentencePiece
    ModelProto: trainer_spec (2).model_type (3); normalizer_spec (3).name (1), .add_dummy_prefix (3),
    .remove_extra_whitespaces (4). Proto defaults: UNIGRAM (1), true, true."""
    with open(path, "rb") as f:
        buf = f.read()
    model_type, name, add_dummy_prefix, remove_spaces = 1, "", True, True
    for field, value in _proto_fields(buf):
        if field == 2 and isinstance(value, bytes):
            model_type = dict(_proto_fields(value)).get(3, model_type)
        elif field == 3 and isinstance(value, bytes):
            spec = dict(_proto_fields(value))
            name = spec.get(1, b"").decode("utf-8", "replace")
            add_dummy_prefix = bool(spec.get(3, add_dummy_prefix))
            remove_spaces = bool(spec.get(4, remove_spaces))
    return model_type, name, add_dummy_prefix, remove_spaces


def _spm_tokenizer(path: str, added_decoder: dict, n_vocab: int) -> TokenizerData:
    try:
        import sentencepiece
    except ImportError:
        raise TcaError(
            f"{path}: converting a SentencePiece tokenizer needs the sentencepiece package "
            "(pip install sentencepiece)"
        ) from None
    model_type, normalizer, add_dummy_prefix, remove_spaces = _spm_spec(path)
    if model_type != 2:
        raise TcaError(f"{path}: SentencePiece model type {model_type} is not supported (BPE only)")
    # The `llama` tokenizer applies no normalization: text would be tokenized differently otherwise.
    if normalizer != "identity" or remove_spaces:
        raise TcaError(
            f"{path}: SentencePiece normalizer {normalizer!r} (remove_extra_whitespaces={remove_spaces}) is "
            "not supported: only 'identity' without whitespace removal, as in Llama and Mistral"
        )
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    tokens, types, scores = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    # added_tokens_decoder: tokens added on top of the SentencePiece model (or re-marked as special)
    for key in sorted(added_decoder, key=int):
        i, entry = int(key), added_decoder[key]
        kind = gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED
        if i < len(tokens):
            if types[i] == gguf.TokenType.UNUSED:  # a reserved piece given a meaning; others keep theirs
                tokens[i], types[i] = entry["content"], kind
            continue
        while len(tokens) < i:
            tokens.append(f"[PAD{len(tokens)}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
        tokens.append(entry["content"])
        types.append(kind)
        scores.append(-1000.0)
    _pad_vocab(tokens, types, n_vocab, path)
    scores += [-1000.0] * (len(tokens) - len(scores))
    data = TokenizerData("llama", tokens, types)
    data.scores = scores
    data.add_space_prefix = add_dummy_prefix
    return data


def _template_adds(post: dict) -> tuple:
    """(add_bos, add_eos) from a TemplateProcessing post-processor, as Llama 3 declares its BOS: a
    special token first or last in the single-sequence template."""
    if post and post.get("type") == "Sequence":
        post = next((p for p in post.get("processors", []) if p.get("type") == "TemplateProcessing"), None)
    if not post or post.get("type") != "TemplateProcessing" or not post.get("single"):
        return False, False
    single = post["single"]
    return "SpecialToken" in single[0], len(single) > 1 and "SpecialToken" in single[-1]


def convert_tokenizer(ckpt_dir: str, config: dict, n_vocab: int) -> tuple:
    """Reads the checkpoint's tokenizer files -> (TokenizerData, special keys dict, chat template)."""
    json_path = os.path.join(ckpt_dir, "tokenizer.json")
    spm_path = os.path.join(ckpt_dir, "tokenizer.model")
    cfg_path = os.path.join(ckpt_dir, "tokenizer_config.json")
    tok_cfg = _load_json(cfg_path) if os.path.exists(cfg_path) else {}
    tok_json = _load_json(json_path) if os.path.exists(json_path) else None
    if tok_json is not None and is_byte_level_bpe(tok_json):
        data = _bpe_tokenizer(json_path, tok_json, n_vocab)
        add_bos_default, add_eos_default = _template_adds(tok_json.get("post_processor"))
    elif os.path.exists(spm_path):
        data = _spm_tokenizer(spm_path, tok_cfg.get("added_tokens_decoder") or {}, n_vocab)
        add_bos_default, add_eos_default = True, False
    elif tok_json is not None:
        raise TcaError(
            f"{json_path}: only byte-level BPE tokenizers are supported without tokenizer.model "
            f"(model type {tok_json.get('model', {}).get('type')!r})"
        )
    else:
        raise TcaError(f"{ckpt_dir}: missing tokenizer.json or tokenizer.model")

    ids = {t: i for i, t in enumerate(data.tokens)}
    special = {}
    for name, key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unk_token_id"),
        ("pad", "pad_token_id"),
    ):
        content = _token_content(tok_cfg.get(f"{name}_token"))
        if content is not None:
            if content not in ids:
                raise TcaError(f"{cfg_path}: {name}_token {content!r} is not in the vocabulary")
            special[key] = ids[content]
        elif isinstance(config.get(f"{name}_token_id"), int):
            special[key] = config[f"{name}_token_id"]
    special["add_bos_token"] = bool(tok_cfg.get("add_bos_token", add_bos_default))
    special["add_eos_token"] = bool(tok_cfg.get("add_eos_token", add_eos_default))

    chat_template = tok_cfg.get("chat_template")
    jinja_path = os.path.join(ckpt_dir, "chat_template.jinja")
    if chat_template is None and os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            chat_template = f.read()
    return data, special, chat_template
