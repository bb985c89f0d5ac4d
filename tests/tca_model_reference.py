"""A whole-model TCA reference: tca.reference's NumPy forward pass with every layer's attention replaced by
spec section 5, written with tca.tca_reference only. The tokens arrive in chunks, as the engine's eval
calls: a chunk of several tokens is prefilled with the selection rule over the head's uncompacted tokens
(the recent region plus the chunk), a single token is a decode step that may compact the oldest block.
K and V are rounded to fp16 as the engine caches them."""

import numpy as np

from tca import tca_reference as tr


def attend(q, k, v):
    """q [G, d] over keys k, v [n, d] -> out [G, d], probs [G, n] (fp64)."""
    logits = q @ k.T / np.sqrt(q.shape[1])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return probs @ v, probs


class TcaAttention:
    """attention_fn for RefModel.forward over tokens evaluated in chunks of the given sizes.

    config [n_layer, n_head_kv, n_levels]; after the call, `kept[il][g]` holds the positions the engine's
    cache of (layer il, KV head g) should hold, in cache order."""

    def __init__(self, config, chunks, b, w, alpha):
        self.config, self.chunks, self.b, self.w, self.alpha = config, chunks, b, w, alpha
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
            global_, recent, start = [], [], 0
            for size in self.chunks:
                new = list(range(start, start + size))
                start += size
                if size == 1:
                    recent.append(new[0])
                    pos = global_ + recent
                    out[new[0], heads], probs = attend(q[new[0], heads], k[pos, g], v[pos, g])
                    if len(recent) >= self.w + self.b:
                        block = probs.mean(axis=0)[len(global_) : len(global_) + self.b]
                        global_ += [recent[j] for j in tr.top_t(block.astype(np.float32), tr.decode_keep(p))]
                        recent = recent[self.b :]
                    continue
                region = recent + new
                L = len(region)
                L_g = max(tr.global_len(L, self.b, self.w), 0)
                G = []
                if L_g > 0:
                    s = tr.scores(q[new[-1], heads], k[region, g])
                    G = tr.select(s, p, self.b, self.w, self.alpha).tolist()
                mask = tr.prefill_mask(L, np.array(G, dtype=np.int64), L_g, self.w)
                for r in range(L - size, L):
                    pos = global_ + [region[j] for j in range(L) if mask[r, j]]
                    out[region[r], heads], _ = attend(q[region[r], heads], k[pos, g], v[pos, g])
                global_ += [region[j] for j in G]
                recent = region[L_g:]
            self.kept[il].append(np.array(global_ + recent, dtype=np.int64))
        return out.reshape(n, n_head * d)
