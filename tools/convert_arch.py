"""Hugging Face architectures -> GGUF: one table of tensor names, one small class per architecture.

Each class reads config.json into llama.cpp-style hyper-parameters, lists the tensors it expects with
their Hugging Face shapes (so a checkpoint that disagrees with its config fails before anything is
written), writes the GGUF keys, and says how a tensor's rows are reordered.
"""

import math

import gguf
import numpy as np

from tca import TcaError

# Hugging Face name -> GGUF name; "{bid}" is the layer index. Both architectures share it; qwen2 adds
# the q/k/v biases, llama has them only when config.attention_bias is set.
TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight": "blk.{bid}.attn_q.weight",
    "model.layers.{bid}.self_attn.k_proj.weight": "blk.{bid}.attn_k.weight",
    "model.layers.{bid}.self_attn.v_proj.weight": "blk.{bid}.attn_v.weight",
    "model.layers.{bid}.self_attn.q_proj.bias": "blk.{bid}.attn_q.bias",
    "model.layers.{bid}.self_attn.k_proj.bias": "blk.{bid}.attn_k.bias",
    "model.layers.{bid}.self_attn.v_proj.bias": "blk.{bid}.attn_v.bias",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight": "blk.{bid}.ffn_gate.weight",
    "model.layers.{bid}.mlp.up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}
# Present in some checkpoints, recomputed by the engine: skipped.
IGNORED_NAMES = ("model.layers.{bid}.self_attn.rotary_emb.inv_freq",)


def _get(config: dict, key: str, kind=int, default=None):
    value = config.get(key)
    if value is None:  # absent or null
        value = default
    if value is None:
        raise TcaError(f"config.json: missing key '{key}'")
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise TcaError(f"config.json: '{key}' must be a positive integer, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or value <= 0):
        raise TcaError(f"config.json: '{key}' must be a positive number, got {value!r}")
    return value


class Arch:
    """Decoder-only transformer with RMSNorm, SwiGLU MLP and RoPE, as llama and qwen2 share it."""

    gguf_arch = ""
    qkv_bias = False

    def __init__(self, config: dict):
        self.n_vocab = _get(config, "vocab_size")
        self.n_embd = _get(config, "hidden_size")
        self.n_layer = _get(config, "num_hidden_layers")
        self.n_ff = _get(config, "intermediate_size")
        self.n_head = _get(config, "num_attention_heads")
        self.n_head_kv = _get(config, "num_key_value_heads", default=self.n_head)
        self.head_dim = _get(config, "head_dim", default=self.n_embd // self.n_head)
        self.n_ctx_train = _get(config, "max_position_embeddings")
        self.rms_eps = _get(config, "rms_norm_eps", float)
        self.rope_theta = float(_get(config, "rope_theta", float, 10000.0))
        self.tie_embd = bool(config.get("tie_word_embeddings", False))
        if self.n_head % self.n_head_kv:
            raise TcaError(
                f"config.json: num_attention_heads {self.n_head} is not a multiple of "
                f"num_key_value_heads {self.n_head_kv}"
            )
        if self.head_dim % 2:
            raise TcaError(f"config.json: head_dim {self.head_dim} must be even for RoPE")
        if config.get("hidden_act", "silu") != "silu":
            raise TcaError(f"config.json: hidden_act {config['hidden_act']!r} is not supported (silu only)")
        self.rope_scaling = config.get("rope_scaling") or None
        self.rope_type = "none"
        if self.rope_scaling is not None:
            self.rope_type = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if self.rope_type == "default":
                self.rope_type = "none"
            if self.rope_type not in self.supported_rope_types:
                raise TcaError(
                    f"config.json: rope_scaling type {self.rope_type!r} is not supported for "
                    f"{self.gguf_arch} (supported: {', '.join(self.supported_rope_types)})"
                )

    supported_rope_types = ("none", "linear")

    def expected_tensors(self) -> dict:
        """GGUF name -> (Hugging Face name, Hugging Face shape [n_out, n_in] or [n])."""
        e, hd = self.n_embd, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        shapes = {
            "token_embd.weight": (self.n_vocab, e),
            "output_norm.weight": (e,),
            "attn_norm.weight": (e,),
            "attn_q.weight": (q, e),
            "attn_k.weight": (kv, e),
            "attn_v.weight": (kv, e),
            "attn_output.weight": (e, q),
            "ffn_norm.weight": (e,),
            "ffn_gate.weight": (self.n_ff, e),
            "ffn_up.weight": (self.n_ff, e),
            "ffn_down.weight": (e, self.n_ff),
        }
        if not self.tie_embd:
            shapes["output.weight"] = (self.n_vocab, e)
        if self.qkv_bias:
            shapes.update({"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
        # file order: token_embd, then layer by layer, then the output tensors
        out = {}
        for bid in [None, *range(self.n_layer), None]:
            for hf_name, gguf_name in TENSOR_NAMES.items():
                short = gguf_name.replace("blk.{bid}.", "")
                if short in shapes and ("{bid}" in hf_name) == (bid is not None):
                    out.setdefault(gguf_name.format(bid=bid), (hf_name.format(bid=bid), shapes[short]))
        out["output_norm.weight"] = out.pop("output_norm.weight")
        if "output.weight" in out:
            out["output.weight"] = out.pop("output.weight")
        return out

    def skipped(self, hf_name: str) -> bool:
        """Tensors a checkpoint may hold that the GGUF does not need."""
        if self.tie_embd and hf_name == "lm_head.weight":
            return True  # tied: the engine reuses token_embd
        return any(hf_name == p.format(bid=b) for p in IGNORED_NAMES for b in range(self.n_layer))

    def row_order(self, gguf_name: str):
        """Source row for each output row of the tensor, or None to keep the order."""
        return None

    def extra_tensors(self) -> dict:
        """Tensors computed from config.json rather than read: GGUF name -> float32 array."""
        return {}

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        w.add_vocab_size(self.n_vocab)
        w.add_context_length(self.n_ctx_train)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(self.rms_eps)
        w.add_rope_freq_base(self.rope_theta)
        w.add_rope_dimension_count(self.head_dim)
        if self.head_dim != self.n_embd // self.n_head:
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        if self.rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(_get(self.rope_scaling, "factor", float)))


class LlamaArch(Arch):
    """Llama 2/3/3.1, Mistral, SmolLM2. The GGUF `llama` convention rotates adjacent pairs (2i, 2i+1)
    where Hugging Face rotates halves (i, i + head_dim/2): Q and K rows are permuted per head."""

    gguf_arch = "llama"
    supported_rope_types = ("none", "linear", "llama3")

    def __init__(self, config: dict):
        super().__init__(config)
        self.qkv_bias = bool(config.get("attention_bias", False))
        if config.get("mlp_bias", False):
            raise TcaError("config.json: mlp_bias is not supported")

    def row_order(self, gguf_name: str):
        for short, n_head in (("attn_q.", self.n_head), ("attn_k.", self.n_head_kv)):
            if f".{short}" in gguf_name:
                # HF row j*hd/2 + i of a head becomes row 2i + j: [n_head, 2, hd/2] -> [n_head, hd/2, 2]
                rows = np.arange(n_head * self.head_dim).reshape(n_head, 2, self.head_dim // 2)
                return rows.swapaxes(1, 2).reshape(-1)
        return None

    def extra_tensors(self) -> dict:
        if self.rope_type != "llama3":
            return {}
        return {"rope_freqs.weight": llama3_rope_factors(self.rope_scaling, self.rope_theta, self.head_dim)}


def llama3_rope_factors(scaling: dict, rope_theta: float, head_dim: int) -> np.ndarray:
    """Llama 3.1 frequency scaling as per-dimension divisors of the RoPE frequencies [head_dim/2]:
    high frequencies (short wavelengths) are kept, low ones divided by `factor`, a smooth ramp between."""
    factor = float(_get(scaling, "factor", float))
    low = float(_get(scaling, "low_freq_factor", float))
    high = float(_get(scaling, "high_freq_factor", float))
    n_ctx_orig = _get(scaling, "original_max_position_embeddings")
    if high <= low:
        raise TcaError("config.json: rope_scaling high_freq_factor must exceed low_freq_factor")
    freqs = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (n_ctx_orig / wavelen - low) / (high - low)
    divisors = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen < n_ctx_orig / high, 1.0, divisors)
    divisors = np.where(wavelen > n_ctx_orig / low, factor, divisors)
    return divisors.astype(np.float32)


class Qwen2Arch(Arch):
    """Qwen2 / Qwen2.5: rotate-half RoPE kept as is, q/k/v biases."""

    gguf_arch = "qwen2"
    qkv_bias = True

    def __init__(self, config: dict):
        super().__init__(config)
        if config.get("use_sliding_window", False):
            raise TcaError("config.json: use_sliding_window is not supported")


ARCHITECTURES = {
    "LlamaForCausalLM": LlamaArch,
    "MistralForCausalLM": LlamaArch,
    "Qwen2ForCausalLM": Qwen2Arch,
}


def arch_from_config(config: dict) -> Arch:
    names = config.get("architectures") or []
    if len(names) != 1:
        raise TcaError(f"config.json: 'architectures' must name one architecture, got {names!r}")
    if names[0] not in ARCHITECTURES:
        raise TcaError(
            f"config.json: architecture {names[0]!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    return ARCHITECTURES[names[0]](config)
