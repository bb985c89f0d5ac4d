"""Plain NumPy forward pass of a GGUF model: the ground truth the C++ engine is tested against.

Supported architectures: `llama` (Llama 2/3/3.1, Mistral, SmolLM2) and `qwen2` (Qwen2/2.5: biases on
q, k and v). Every weight is dequantized once with gguf-py to float32, which is exact for every ggml
type; the arithmetic (matmuls, norms, RoPE, softmax) is done in float64 so that the reference's own
rounding error is negligible next to the engine's float32 error.

RoPE pairs: `llama` GGUF files store the Q and K rows permuted so that RoPE rotates adjacent pairs
(2i, 2i+1) (llama.cpp's "normal" rope); `qwen2` rotates pairs (i, i + n_rot/2) ("neox" rope).

    model = load_model(path)
    logits = model.forward([1, 2, 3])   # [n_tokens, n_vocab] float32
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROPE_STYLE = {"llama": "normal", "qwen2": "neox"}
LAYER_TENSORS = {  # Layer field -> GGUF tensor name after "blk.{il}."
    "attn_norm": "attn_norm.weight",
    "wq": "attn_q.weight",
    "wk": "attn_k.weight",
    "wv": "attn_v.weight",
    "wo": "attn_output.weight",
    "bq": "attn_q.bias",
    "bk": "attn_k.bias",
    "bv": "attn_v.bias",
    "ffn_norm": "ffn_norm.weight",
    "w_gate": "ffn_gate.weight",
    "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight",
}


@dataclass
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int  # leading dimensions of each head that RoPE rotates
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor
    rms_eps: float
    rope_style: str  # "normal": pairs (2i, 2i+1); "neox": pairs (i, i + n_rot/2)


@dataclass
class Layer:  # matrices are [n_out, n_in], float32
    attn_norm: np.ndarray  # [n_embd]
    wq: np.ndarray  # [n_head * head_dim, n_embd]
    wk: np.ndarray  # [n_head_kv * head_dim, n_embd]
    wv: np.ndarray  # [n_head_kv * head_dim, n_embd]
    wo: np.ndarray  # [n_embd, n_head * head_dim]
    bq: Optional[np.ndarray]  # [n_head * head_dim] (qwen2) or None
    bk: Optional[np.ndarray]  # [n_head_kv * head_dim]
    bv: Optional[np.ndarray]  # [n_head_kv * head_dim]
    ffn_norm: np.ndarray  # [n_embd]
    w_gate: np.ndarray  # [n_ff, n_embd]
    w_up: np.ndarray  # [n_ff, n_embd]
    w_down: np.ndarray  # [n_embd, n_ff]


class RefModel:
    def __init__(self, hp: HParams, tensors: dict):
        self.hp = hp
        self.tok_embd = tensors["token_embd.weight"]  # [n_vocab, n_embd]
        self.output_norm = tensors["output_norm.weight"]  # [n_embd]
        self.output = tensors.get("output.weight", self.tok_embd)  # [n_vocab, n_embd]; tied when absent
        self.rope_freqs = tensors.get("rope_freqs.weight")  # [n_rot/2] frequency divisors (Llama 3.1)
        self.layers = []
        for il in range(hp.n_layer):
            weights = {}
            for field, name in LAYER_TENSORS.items():
                weights[field] = tensors.get(f"blk.{il}.{name}")
                if weights[field] is None and field not in ("bq", "bk", "bv"):
                    raise ValueError(f"missing tensor blk.{il}.{name}")
            self.layers.append(Layer(**weights))

    def forward(self, tokens: list) -> np.ndarray:
        """Logits [n_tokens, n_vocab] (float32) for tokens at positions 0 .. n_tokens-1, causal."""
        hp = self.hp
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or len(tokens) == 0 or tokens.min() < 0 or tokens.max() >= hp.n_vocab:
            raise ValueError(f"tokens must be a non-empty list of ids in [0, {hp.n_vocab})")
        n = len(tokens)
        x = self.tok_embd[tokens].astype(np.float64)  # [n, n_embd]
        cos, sin = rope_tables(hp, self.rope_freqs, np.arange(n))
        for layer in self.layers:
            h = rms_norm(x, layer.attn_norm, hp.rms_eps)
            q = linear(h, layer.wq, layer.bq).reshape(n, hp.n_head, hp.head_dim)
            k = linear(h, layer.wk, layer.bk).reshape(n, hp.n_head_kv, hp.head_dim)
            v = linear(h, layer.wv, layer.bv).reshape(n, hp.n_head_kv, hp.head_dim)
            q = rope(q, cos, sin, hp)
            k = rope(k, cos, sin, hp)
            attn = attention(q, k, v)  # [n, n_head * head_dim]
            x = x + linear(attn, layer.wo)
            h = rms_norm(x, layer.ffn_norm, hp.rms_eps)
            gate, up = linear(h, layer.w_gate), linear(h, layer.w_up)
            x = x + linear(gate / (1.0 + np.exp(-gate)) * up, layer.w_down)  # SwiGLU
        x = rms_norm(x, self.output_norm, hp.rms_eps)
        return linear(x, self.output).astype(np.float32)


def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    """x [n, n_in] (float64) times w [n_out, n_in] transposed, plus b [n_out]: [n, n_out] float64."""
    y = x @ w.T.astype(np.float64)
    return y if b is None else y + b


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [n, n_embd] scaled to unit root mean square per row, times weight [n_embd]."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_tables(hp: HParams, freq_factors: Optional[np.ndarray], pos: np.ndarray) -> tuple:
    """cos and sin [n, n_rot/2] of angle pos * freq_scale * base^(-2i/n_rot) / freq_factors[i]."""
    theta = hp.rope_base ** (-np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)  # [n_rot/2]
    if freq_factors is not None:
        theta = theta / freq_factors
    angle = np.outer(pos * hp.rope_freq_scale, theta)
    return np.cos(angle), np.sin(angle)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, hp: HParams) -> np.ndarray:
    """Rotates the first n_rot dimensions of each head of x [n, n_heads, head_dim] in pairs (a, b):
    (a, b) -> (a cos - b sin, a sin + b cos), with the pairs chosen by hp.rope_style."""
    half = hp.n_rot // 2
    idx = np.arange(half)
    a_idx, b_idx = (2 * idx, 2 * idx + 1) if hp.rope_style == "normal" else (idx, idx + half)
    a, b = x[:, :, a_idx], x[:, :, b_idx]  # [n, n_heads, n_rot/2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.copy()
    out[:, :, a_idx] = a * c - b * s
    out[:, :, b_idx] = a * s + b * c
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal softmax attention. q [n, n_head, d], k and v [n, n_head_kv, d]; query head h reads KV
    head h // (n_head / n_head_kv) (grouped-query attention). Returns [n, n_head * d]."""
    n, n_head, d = q.shape
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1)  # [n, n_head, d]
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d)  # [n_head, n_q, n_k]
    scores = np.where(np.tri(n, dtype=bool), scores, -np.inf)  # query i sees keys 0..i
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, n_head * d)


def load_model(path: str) -> RefModel:
    """Reads a GGUF file and dequantizes every tensor to float32."""
    reader = GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        # gguf-py gives data in NumPy order, the reverse of ggml's ne: [n_out, n_in] for matrices.
        tensors[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(t.shape[::-1])
    return RefModel(read_hparams(path, meta, tensors), tensors)


def read_hparams(path: str, meta: dict, tensors: dict) -> HParams:
    arch = meta.get("general.architecture")
    if arch not in ROPE_STYLE:
        raise ValueError(f"{path}: architecture '{arch}' is not supported (supported: llama, qwen2)")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: missing key {arch}.{key}")
        return value

    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"{path}: {arch}.rope.scaling.type '{scaling}' is not supported (none, linear)")
    factor = float(get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    return HParams(
        arch=arch,
        n_vocab=tensors["token_embd.weight"].shape[0],
        n_ctx_train=int(get("context_length")),
        n_embd=n_embd,
        n_ff=int(get("feed_forward_length")),
        n_layer=int(get("block_count")),
        n_head=n_head,
        n_head_kv=int(get("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_rot=int(get("rope.dimension_count", head_dim)),
        rope_base=float(get("rope.freq_base", 10000.0)),
        rope_freq_scale=1.0 / factor,
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_style=ROPE_STYLE[arch],
    )
