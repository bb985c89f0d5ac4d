"""A NumPy forward pass that follows Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM, read straight
from the checkpoint's safetensors: rotate-half RoPE (pairs i, i + head_dim/2) on the unpermuted q/k
weights, so that comparing it with a converted GGUF tests the converter's permutation."""

import json
import math
import os

import numpy as np

from tca.tools.safetensors_io import SafetensorsFile


def rope_inv_freq(cfg: dict) -> np.ndarray:
    """[head_dim/2] as transformers computes it, including the llama3 and linear scalings."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    inv_freq = 1.0 / cfg.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        n_orig = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > n_orig / lo, inv_freq / factor, inv_freq)
        smooth = (n_orig / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < n_orig / hi) & ~(wavelen > n_orig / lo)
        return np.where(medium, smoothed, scaled)
    assert kind == "default", kind
    return inv_freq


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class HFModel:
    def __init__(self, ckpt_dir: str):
        with open(os.path.join(ckpt_dir, "config.json")) as f:
            self.cfg = json.load(f)
        self.w = {}
        for name in sorted(os.listdir(ckpt_dir)):
            if name.endswith(".safetensors"):
                with SafetensorsFile(os.path.join(ckpt_dir, name)) as st:
                    self.w.update({t: st.read_f32(t) for t in st.names()})  # float32; math in float64

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg["rms_norm_eps"]) * weight

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x [n, n_in] @ W^T [n_in, n_out] (+ b): a float32 product (relative error ~1e-6, far under the
        tests' tolerances), accumulated onward in float64."""
        y = (x.astype(np.float32) @ self.w[name + ".weight"].T).astype(np.float64)
        return y + self.w[name + ".bias"] if name + ".bias" in self.w else y

    def forward(self, tokens: list) -> np.ndarray:
        """tokens [n] -> logits [n, vocab_size] (float64), positions 0..n-1."""
        cfg, w = self.cfg, self.w
        n, n_head, n_head_kv = len(tokens), cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or cfg["hidden_size"] // n_head
        angles = np.arange(n)[:, None] * rope_inv_freq(cfg)[None, :]  # [n, hd/2]
        cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]  # [n, 1, hd]
        sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        x = w["model.embed_tokens.weight"][tokens].astype(np.float64)  # [n, n_embd]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self.rms_norm(x, w[p + "input_layernorm.weight"])
            q = self.linear(h, p + "self_attn.q_proj").reshape(n, n_head, hd)
            k = self.linear(h, p + "self_attn.k_proj").reshape(n, n_head_kv, hd)
            v = self.linear(h, p + "self_attn.v_proj").reshape(n, n_head_kv, hd)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            group = n_head // n_head_kv
            out = np.empty((n, n_head, hd))
            for hh in range(n_head):
                s = q[:, hh] @ k[:, hh // group].T / math.sqrt(hd) + mask  # [n, n]
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                out[:, hh] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, hh // group]
            x = x + self.linear(out.reshape(n, n_head * hd), p + "self_attn.o_proj")
            h = self.rms_norm(x, w[p + "post_attention_layernorm.weight"])
            gate = self.linear(h, p + "mlp.gate_proj")
            x = x + self.linear(
                gate / (1 + np.exp(-gate)) * self.linear(h, p + "mlp.up_proj"), p + "mlp.down_proj"
            )
        x = self.rms_norm(x, w["model.norm.weight"])
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return x @ head.T


def load_model(ckpt_dir: str) -> HFModel:
    return HFModel(ckpt_dir)
