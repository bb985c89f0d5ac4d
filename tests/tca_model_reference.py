"""A whole-model TCA reference: tca.reference's NumPy forward pass with every layer's attention replaced by
spec section 5 (sparse prefill from the prompt's last query, then one-token decode steps that compact the
cache), written with tca.tca_reference only. K and V are rounded to fp16 as the engine caches them."""

import numpy as np

from tca import tca_reference as tr


class TcaAttention:
    """attention_fn for RefModel.forward over a prompt of n_prompt tokens followed by decode steps.

    config [n_layer, n_head_kv, n_levels]; after the call, `kept[il][g]` holds the positions the engine's
    cache of (layer il, KV head g) should hold."""

    def __init__(self, config, n_prompt, b, w, alpha):
        self.config, self.n_prompt, self.b, self.w, self.alpha = config, n_prompt, b, w, alpha
        self.kept = {}

    def __call__(self, il, q, k, v):
        n, n_head, d = q.shape
        n_head_kv = k.shape[1]
        group = n_head // n_head_kv
        k = k.astype(np.float16).astype(np.float64)
        v = v.astype(np.float16).astype(np.float64)
        out = np.zeros((n, n_head, d))
        self.kept[il] = []
        for g in range(n_head_kv):
            heads = slice(g * group, (g + 1) * group)
            p = self.config[il, g]
            L = self.n_prompt
            L_g = tr.global_len(L, self.b, self.w)
            G = np.zeros(0, dtype=np.int64)
            if L_g > 0:
                G = tr.select(tr.scores(q[L - 1, heads], k[:L, g]), p, self.b, self.w, self.alpha)
            mask = tr.prefill_mask(L, G, L_g, self.w)
            out[:L, heads] = tr.dense_attention(q[:L, heads], k[:L, g : g + 1], v[:L, g : g + 1], mask)

            cache = tr.DecodeCache(G, L, p, self.b, self.w)
            if L_g <= 0:
                cache.recent = list(range(L))
            for i in range(L, n):
                due = cache.append(i)
                pos = cache.positions()
                logits = np.einsum("hd,kd->hk", q[i, heads], k[pos, g]) / np.sqrt(d)
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                out[i, heads] = probs @ v[pos, g]
                if due:
                    oldest = len(cache.global_)  # the oldest b recent tokens follow the global ones
                    cache.compact(probs.mean(axis=0)[oldest : oldest + self.b])
            self.kept[il].append(cache.positions())
        return out.reshape(n, n_head * d)
