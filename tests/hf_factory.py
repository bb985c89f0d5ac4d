"""Writes small random Hugging Face checkpoints: config.json, sharded *.safetensors with
model.safetensors.index.json, tokenizer.json (byte-level BPE) and/or tokenizer.model (SentencePiece BPE),
tokenizer_config.json with special tokens and a chat template."""

import io
import json
import os

import numpy as np

from tca.tools.convert_tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN
from tca.tools.safetensors_io import SafetensorsWriter

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Merges of the test BPE vocabulary (byte-level symbols; "Ġ" is the space byte).
MERGES = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
    ("o", "r"),
    ("Ġw", "or"),
    ("l", "d"),
    ("Ġwor", "ld"),
    ("Ġ", "t"),
    ("Ġt", "he"),
    ("1", "2"),
]


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the others
    to U+0100 upwards in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(0x100 + n)
            n += 1
    return out


def bpe_vocab() -> dict:
    """token -> id: the special tokens, the 256 byte symbols, then one token per merge."""
    tokens = SPECIALS + [bytes_to_unicode()[b] for b in range(256)] + [a + b for a, b in MERGES]
    return {t: i for i, t in enumerate(tokens)}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SPLIT_PATTERNS = {"qwen2": QWEN2_PATTERN, "llama-bpe": LLAMA3_PATTERN}


def pre_tokenizer_json(pre: str) -> dict:
    """tokenizer.json's pre_tokenizer for llama.cpp's pre-tokenizer name (smollm, gpt-2, qwen2,
    llama-bpe), written as those models' own files declare it; any other string is taken as a regex."""
    if pre == "smollm":
        return {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
        }
    if pre == "gpt-2":
        return dict(BYTE_LEVEL)
    pattern = {"Regex": SPLIT_PATTERNS.get(pre, pre)}
    split = {"type": "Split", "pattern": pattern, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, dict(BYTE_LEVEL, use_regex=False)]}


def write_bpe_tokenizer(ckpt_dir: str, pre: str = "smollm") -> dict:
    """tokenizer.json with the test vocabulary and the given pre-tokenizer (see pre_tokenizer_json)."""
    vocab = bpe_vocab()
    tok = {
        "version": "1.0",
        "added_tokens": [{"id": vocab[t], "content": t, "special": True} for t in SPECIALS],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_json(pre),
        "decoder": dict(BYTE_LEVEL),
        "model": {"type": "BPE", "vocab": vocab, "merges": [f"{a} {b}" for a, b in MERGES]},
    }
    with open(os.path.join(ckpt_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    return vocab


def write_spm_tokenizer(ckpt_dir: str, vocab_size: int = 400) -> str:
    """Trains a small SentencePiece BPE model with byte fallback on Python's own docs -> its path."""
    import pydoc_data.topics

    import sentencepiece as spm

    text = "\n".join(pydoc_data.topics.topics.values())[:60000].splitlines()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text if line.strip()]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
        normalization_rule_name="identity",  # as Llama's and Mistral's tokenizer.model
        remove_extra_whitespaces=False,
    )
    path = os.path.join(ckpt_dir, "tokenizer.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def hf_tensor_shapes(cfg: dict) -> dict:
    """Hugging Face name -> shape for a llama/qwen2 config."""
    e, hd, ff = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], e)}
    bias = cfg["architectures"][0] == "Qwen2ForCausalLM" or cfg.get("attention_bias", False)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (e,),
                p + "self_attn.q_proj.weight": (q, e),
                p + "self_attn.k_proj.weight": (kv, e),
                p + "self_attn.v_proj.weight": (kv, e),
                p + "self_attn.o_proj.weight": (e, q),
                p + "post_attention_layernorm.weight": (e,),
                p + "mlp.gate_proj.weight": (ff, e),
                p + "mlp.up_proj.weight": (ff, e),
                p + "mlp.down_proj.weight": (e, ff),
            }
        )
        if bias:
            shapes.update(
                {
                    p + "self_attn.q_proj.bias": (q,),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,),
                }
            )
    shapes["model.norm.weight"] = (e,)
    if not cfg.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (cfg["vocab_size"], e)
    return shapes


def random_tensor(rng, name: str, shape: tuple) -> np.ndarray:
    """Weights scaled so activations stay O(1) through the layers: norms near 1, matrices ~ 1/sqrt(n_in)."""
    if name.endswith("norm.weight"):
        return (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    if name == "model.embed_tokens.weight":
        return rng.standard_normal(shape).astype(np.float32)
    return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)


def write_weights(ckpt_dir: str, shapes: dict, dtype: str, n_shards: int, make) -> None:
    """Writes the tensors over n_shards files plus the index; make(name, shape) -> array, called once
    per tensor as it is written."""
    names = list(shapes)
    groups = [names[i::n_shards] for i in range(n_shards)]
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        w = SafetensorsWriter(
            os.path.join(ckpt_dir, fname), [(n, dtype, shapes[n]) for n in group], {"format": "pt"}
        )
        for name in group:
            w.write(name, make(name, shapes[name]))
            weight_map[name] = fname
            total += int(np.prod(shapes[name])) * (4 if dtype == "F32" else 2)
        w.close()
    with open(os.path.join(ckpt_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def make_config(
    arch: str = "llama",
    n_vocab: int = 288,
    n_embd: int = 96,
    n_layer: int = 2,
    n_head: int = 6,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_ff: int = 160,
    tie: bool = True,
    rope_scaling: dict = None,
    rope_theta: float = 10000.0,
) -> dict:
    return {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "vocab_size": n_vocab,
        "hidden_size": n_embd,
        "num_hidden_layers": n_layer,
        "intermediate_size": n_ff,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }


def make_checkpoint(
    ckpt_dir: str,
    config: dict,
    tokenizer: str = "bpe",
    pre: str = "smollm",
    dtype: str = "BF16",
    n_shards: int = 2,
    seed: int = 0,
) -> dict:
    """Writes a complete random checkpoint; tokenizer is 'bpe' (tokenizer.json) or 'spm'
    (tokenizer.model). Returns the config."""
    os.makedirs(ckpt_dir, exist_ok=True)
    tok_cfg = {"chat_template": CHAT_TEMPLATE, "add_bos_token": False}
    if tokenizer == "bpe":
        write_bpe_tokenizer(ckpt_dir, pre)
        tok_cfg.update(
            bos_token="<|im_start|>",
            eos_token={"content": "<|im_end|>", "special": True},
            unk_token="<|endoftext|>",
            pad_token="<|im_end|>",
        )
    else:
        write_spm_tokenizer(ckpt_dir)
        tok_cfg.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True)
    with open(os.path.join(ckpt_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=1)
    with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    rng = np.random.default_rng(seed)
    write_weights(
        ckpt_dir,
        hf_tensor_shapes(config),
        dtype,
        n_shards,
        lambda name, shape: random_tensor(rng, name, shape),
    )
    return config


def export_gguf(gguf_path: str, ckpt_dir: str, dtype: str = "F16", n_shards: int = 2) -> dict:
    """Writes a GGUF model (llama or qwen2, gpt2 tokenizer) back in Hugging Face layout: weights
    dequantized, llama Q/K rows un-permuted to rotate-half order, tokenizer.json rebuilt with the
    SmolLM2 pre-tokenizer. Returns the config."""
    import gguf

    from tca.tools.convert_arch import TENSOR_NAMES

    reader = gguf.GGUFReader(gguf_path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    arch = meta["general.architecture"]
    tensors = {t.name: t for t in reader.tensors}
    tokens = meta["tokenizer.ggml.tokens"]
    n_head = meta[f"{arch}.attention.head_count"]
    cfg = make_config(
        arch,
        n_vocab=len(tokens),
        n_embd=meta[f"{arch}.embedding_length"],
        n_layer=meta[f"{arch}.block_count"],
        n_head=n_head,
        n_head_kv=meta[f"{arch}.attention.head_count_kv"],
        head_dim=meta[f"{arch}.embedding_length"] // n_head,
        n_ff=meta[f"{arch}.feed_forward_length"],
        tie="output.weight" not in tensors,
        rope_theta=meta[f"{arch}.rope.freq_base"],
    )
    cfg["max_position_embeddings"] = meta[f"{arch}.context_length"]
    cfg["rms_norm_eps"] = meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    hf_to_gguf = {}
    for hf, gg in TENSOR_NAMES.items():
        for bid in range(cfg["num_hidden_layers"]) if "{bid}" in hf else [0]:
            hf_to_gguf[hf.format(bid=bid)] = gg.format(bid=bid)

    def make(name: str, shape: tuple) -> np.ndarray:
        t = tensors[hf_to_gguf[name]]
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        n_rows_head = cfg["head_dim"]
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            # GGUF row 2i + j of a head holds HF row j * hd/2 + i: [n, hd/2, 2] -> [n, 2, hd/2]
            w = w.reshape(-1, n_rows_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        return w

    os.makedirs(ckpt_dir, exist_ok=True)
    write_weights(ckpt_dir, hf_tensor_shapes(cfg), dtype, n_shards, make)
    with open(os.path.join(ckpt_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)

    export_tokenizer(meta, ckpt_dir, "smollm")
    return cfg


def export_tokenizer(meta: dict, ckpt_dir: str, pre: str) -> None:
    """tokenizer.json and tokenizer_config.json from a GGUF's gpt2 tokenizer keys: control tokens become
    special added tokens, user-defined ones plain added tokens."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    added = [
        {"id": i, "content": t, "special": types[i] == 3} for i, t in enumerate(tokens) if types[i] in (3, 4)
    ]
    tok = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_json(pre),
        "decoder": dict(BYTE_LEVEL),
        "model": {
            "type": "BPE",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]],
        },
    }
    with open(os.path.join(ckpt_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    tok_cfg = {"add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False))}
    if "tokenizer.chat_template" in meta:
        tok_cfg["chat_template"] = meta["tokenizer.chat_template"]
    for name, key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("pad", "padding_token_id"),
    ):
        if f"tokenizer.ggml.{key}" in meta:
            tok_cfg[f"{name}_token"] = tokens[meta[f"tokenizer.ggml.{key}"]]
    with open(os.path.join(ckpt_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=1)
