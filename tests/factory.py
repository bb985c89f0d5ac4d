"""Small random GGUF models for tests: any shape, `llama` or `qwen2`, any common tensor type.

    path = write_random_model(tmp_path / "m.gguf", arch="qwen2", n_head=6, n_head_kv=2, head_dim=80)

Weights are random with scales that keep activations near unit size through the layers (matrices
N(0, 1/n_in), norms near 1, residual branches scaled down by the depth), so logits are neither flat nor
saturated. The vocabulary is a minimal valid byte-level BPE (GPT-2 style): the 256 byte tokens, a few
merges, the ChatML control tokens and padding up to n_vocab, with a ChatML chat template.
"""

from pathlib import Path
from typing import Optional

import gguf
import numpy as np
from gguf.quants import dequantize, quantize

GGUF_QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# gguf-py cannot quantize the k-quants; their blocks are random bytes with the fp16 scale fields
# (byte offsets in each block) set so that the dequantized values have the wanted spread.
KQUANT_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}

MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("r", "e"), ("a", "n")]
MERGES += [("Ġt", "he"), ("Ġa", "n"), ("i", "s"), ("Ġ", "i"), ("Ġ", "s"), ("o", "u"), ("Ġ", "w")]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_to_unicode() -> dict:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to
    themselves, the others to chr(256 + k) in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def vocab_tokens(n_vocab: int) -> tuple:
    """(tokens, token_types) of the test vocabulary, padded with unused "[PAD{i}]" tokens to n_vocab."""
    byte_tokens = [byte_to_unicode()[b] for b in range(256)]
    tokens = byte_tokens + [a + b for a, b in MERGES] + SPECIAL_TOKENS
    types = [gguf.TokenType.NORMAL] * (256 + len(MERGES)) + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    if n_vocab < len(tokens):
        raise ValueError(f"n_vocab must be at least {len(tokens)} (bytes, merges and special tokens)")
    n_pad = n_vocab - len(tokens)
    return tokens + [f"[PAD{i}]" for i in range(n_pad)], types + [gguf.TokenType.UNUSED] * n_pad


def write_random_model(
    path,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 96,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 160,
    n_vocab: int = 320,
    head_dim: Optional[int] = None,
    tensor_type: str = "F32",
    tied: bool = True,
    seed: int = 0,
    rope_base: float = 10000.0,
    rope_freqs: bool = False,
    rope_linear_factor: Optional[float] = None,
    n_ctx_train: int = 4096,
    rms_eps: float = 1e-5,
) -> str:
    """Writes a random model to path and returns path as a string.

    head_dim defaults to n_embd / n_head; when it differs, `{arch}.attention.key_length` is written.
    tensor_type applies to the 2-D weights; norms, biases and rope_freqs stay F32. The k-quants need
    n_embd and n_ff to be multiples of 256, the other quantized types multiples of 32. rope_freqs
    writes Llama 3.1's frequency divisors tensor; rope_linear_factor writes linear rope scaling keys.
    """
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be llama or qwen2, not {arch}")
    if n_head % n_head_kv != 0:
        raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")
    head_dim = head_dim or n_embd // n_head
    rng = np.random.default_rng(seed)
    qtype = gguf.GGMLQuantizationType[tensor_type]

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"random-{arch}")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim * n_head != n_embd:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(rms_eps)
    w.add_vocab_size(n_vocab)
    if tensor_type not in ("F32", "F16"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if rope_linear_factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear_factor)
    add_vocab(w, n_vocab)

    def matrix(name, n_out, n_in, scale=1.0):
        add_matrix(w, rng, name, n_out, n_in, scale / np.sqrt(n_in), qtype)

    def vector(name, n, mean, std):
        w.add_tensor(name, (mean + std * rng.standard_normal(n)).astype(np.float32))

    residual_scale = 1.0 / np.sqrt(2 * n_layer)  # keeps the residual stream's growth modest
    # Embeddings of unit spread; as the tied output matrix they give logits of spread sqrt(n_embd) / 4.
    matrix("token_embd.weight", n_vocab, n_embd, np.sqrt(n_embd) * (0.25 if tied else 1.0))
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied:
        matrix("output.weight", n_vocab, n_embd, 4.0)
    if rope_freqs:  # divisors in [1, 8], as Llama 3.1's long-context scaling gives
        w.add_tensor("rope_freqs.weight", rng.uniform(1.0, 8.0, head_dim // 2).astype(np.float32))
    for il in range(n_layer):
        vector(f"blk.{il}.attn_norm.weight", n_embd, 1.0, 0.1)
        matrix(f"blk.{il}.attn_q.weight", n_head * head_dim, n_embd)
        matrix(f"blk.{il}.attn_k.weight", n_head_kv * head_dim, n_embd)
        matrix(f"blk.{il}.attn_v.weight", n_head_kv * head_dim, n_embd)
        if arch == "qwen2":
            vector(f"blk.{il}.attn_q.bias", n_head * head_dim, 0.0, 0.5)
            vector(f"blk.{il}.attn_k.bias", n_head_kv * head_dim, 0.0, 0.5)
            vector(f"blk.{il}.attn_v.bias", n_head_kv * head_dim, 0.0, 0.5)
        matrix(f"blk.{il}.attn_output.weight", n_embd, n_head * head_dim, residual_scale)
        vector(f"blk.{il}.ffn_norm.weight", n_embd, 1.0, 0.1)
        matrix(f"blk.{il}.ffn_gate.weight", n_ff, n_embd)
        matrix(f"blk.{il}.ffn_up.weight", n_ff, n_embd)
        matrix(f"blk.{il}.ffn_down.weight", n_embd, n_ff, residual_scale)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def add_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    tokens, types = vocab_tokens(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)


def add_matrix(w: gguf.GGUFWriter, rng, name: str, n_out: int, n_in: int, std: float, qtype) -> None:
    """Adds a random [n_out, n_in] matrix of spread std, stored as qtype."""
    type_name = qtype.name
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if n_in % block != 0:
        raise ValueError(f"{name}: n_in {n_in} is not a multiple of the {type_name} block size {block}")
    if type_name in KQUANT_SCALE_OFFSETS:
        w.add_tensor(name, random_kquant(rng, n_out, n_in, std, qtype), raw_dtype=qtype)
        return
    if type_name not in GGUF_QUANTIZABLE:
        raise ValueError(f"tensor type {type_name} is not supported by the test model factory")
    data = (std * rng.standard_normal((n_out, n_in))).astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor(name, data)
    elif qtype == gguf.GGMLQuantizationType.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


def random_kquant(rng, n_out: int, n_in: int, std: float, qtype) -> np.ndarray:
    """Random k-quant blocks [n_out, row bytes] whose dequantized values have standard deviation std."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_out * n_in // block, type_size), dtype=np.uint8)
    offsets = KQUANT_SCALE_OFFSETS[qtype.name]

    def set_scales(value: float):
        for off in offsets:
            blocks[:, off : off + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)

    set_scales(1.0)
    # The rows are independent and alike: a few of them give the spread.
    spread = dequantize(blocks.reshape(n_out, -1)[:64], qtype).std()
    set_scales(std / spread)
    return blocks.reshape(n_out, -1)


# Shapes of real models for synthetic benchmark models (write_synthetic_model).
SHAPES = {
    "llama-3.1-8b": dict(
        n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, tied=False
    ),
    "smollm2-135m": dict(n_layer=30, n_embd=576, n_head=9, n_head_kv=3, n_ff=1536, n_vocab=49152, tied=True),
}


def write_synthetic_model(
    path, shape: str, tensor_type: str = "F16", output_type: Optional[str] = None
) -> str:
    """A model of a real model's shape (SHAPES) with random weights, written fast: one random matrix per
    distinct shape, shared by every layer (for speed benchmarks; the outputs mean nothing). output_type:
    the output matrix's type (default tensor_type), e.g. Q6_K as in Q4_K_M files."""
    hp = SHAPES[shape]
    n_layer, n_embd, n_head, n_head_kv = hp["n_layer"], hp["n_embd"], hp["n_head"], hp["n_head_kv"]
    n_ff, n_vocab, tied = hp["n_ff"], hp["n_vocab"], hp["tied"]
    head_dim = n_embd // n_head
    rng = np.random.default_rng(0)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"synthetic-{shape}")
    w.add_block_count(n_layer)
    w.add_context_length(131072)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(w, n_vocab)

    def random_matrix(n_out, n_in, t):
        if t.name in KQUANT_SCALE_OFFSETS:
            return random_kquant(rng, n_out, n_in, 1.0 / np.sqrt(n_in), t)
        data = (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(np.float32)
        return data.astype(np.float16) if t.name == "F16" else quantize(data, t)

    shared = {}

    def matrix(name, n_out, n_in, t=qtype):
        if (n_out, n_in, t) not in shared:
            shared[(n_out, n_in, t)] = random_matrix(n_out, n_in, t)
        raw = None if t.name in ("F32", "F16") else t
        w.add_tensor(name, shared[(n_out, n_in, t)], raw_dtype=raw)

    ones = np.ones(n_embd, dtype=np.float32)
    matrix("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", ones)
    if not tied:
        matrix("output.weight", n_vocab, n_embd, gguf.GGMLQuantizationType[output_type or tensor_type])
    for il in range(n_layer):
        w.add_tensor(f"blk.{il}.attn_norm.weight", ones)
        matrix(f"blk.{il}.attn_q.weight", n_head * head_dim, n_embd)
        matrix(f"blk.{il}.attn_k.weight", n_head_kv * head_dim, n_embd)
        matrix(f"blk.{il}.attn_v.weight", n_head_kv * head_dim, n_embd)
        matrix(f"blk.{il}.attn_output.weight", n_embd, n_head * head_dim)
        w.add_tensor(f"blk.{il}.ffn_norm.weight", ones)
        matrix(f"blk.{il}.ffn_gate.weight", n_ff, n_embd)
        matrix(f"blk.{il}.ffn_up.weight", n_ff, n_embd)
        matrix(f"blk.{il}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def load_tensors(path) -> dict:
    """All tensors of a GGUF file, dequantized to float32 in NumPy order ([n_out, n_in])."""
    reader = gguf.GGUFReader(str(Path(path)))
    return {t.name: dequantize(t.data, t.tensor_type).reshape(t.shape[::-1]) for t in reader.tensors}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Writes a synthetic model of a real model's shape.")
    p.add_argument("path")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--type", default="F16", help="tensor type of the matrices (F16)")
    p.add_argument("--output-type", default=None, help="type of the output matrix (the --type)")
    a = p.parse_args()
    write_synthetic_model(a.path, a.shape, a.type, a.output_type)
