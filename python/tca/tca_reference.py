"""NumPy ground truth for TCA sections 4 (selection), 5 (which keys each query sees) and 7 (calibration).

Everything here follows /work/shared/TCA_SPEC.md. Choices the spec leaves open are marked [ours]. The C++
selection (engine/tca_select.cpp) mirrors this arithmetic operation by operation so that both give the same
index sets bit for bit:
- scores are float32; block statistics are float64, summed sequentially in position order;
- alpha and the configurations p are float32 (as stored in the GGUF), widened to float64 where used.
"""

import math

import numpy as np


def levels(b: int) -> np.ndarray:
    """Allowed per-block keep counts 1, 2, 4, ..., b (log2(b) + 1 of them)."""
    check_block_size(b)
    return 2 ** np.arange(int(math.log2(b)) + 1, dtype=np.int64)


def check_block_size(b: int) -> None:
    if b < 1 or b > 65536 or b & (b - 1):
        raise ValueError(f"tca: block size b = {b} must be a power of two in [1, 65536]")


def check_config(p: np.ndarray, b: int) -> None:
    """p: float [n_levels], finite, >= 0, sums to 1 within 1e-4."""
    n_levels = len(levels(b))
    if p.shape != (n_levels,):
        raise ValueError(f"tca: configuration has {p.size} levels, expected {n_levels} for b = {b}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("tca: configuration entries must be finite and >= 0")
    if abs(float(np.sum(p, dtype=np.float64)) - 1.0) > 1e-4:
        raise ValueError("tca: configuration does not sum to 1")


def global_len(L: int, b: int, w: int) -> int:
    """L_g = floor((L - w) / b) * b, the length of the global region; 0 when L < w + b (dense)."""
    return max(0, (L - w) // b * b)


# ---------------------------------------------------------------------------------------------------
# Section 4: online token selection


def scores(q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """q [G, d] (the group's query rows at the last token), K [L, d] -> s [L] float32.

    s = mean over the group of softmax(q_h . K^T / sqrt(d)), each row normalised first; computed in fp64.
    """
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    logits = q @ K.T / math.sqrt(K.shape[1])  # [G, L]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.mean(axis=0).astype(np.float32)


def block_scores(s: np.ndarray, b: int, alpha: float) -> np.ndarray:
    """s [n * b] float32 -> h [n] float64: h = (1 - alpha) * mass + alpha * (1 - hhi); h = 0 when mass = 0."""
    alpha = float(np.float32(alpha))
    blocks = np.asarray(s, dtype=np.float32).reshape(-1, b).astype(np.float64)  # [n, b]
    mass = np.zeros(len(blocks))
    sum_sq = np.zeros(len(blocks))
    for i in range(b):  # sequential in position order, as the C++ does
        mass += blocks[:, i]
        sum_sq += blocks[:, i] * blocks[:, i]
    h = np.zeros(len(blocks))
    nz = mass > 0
    hhi = sum_sq[nz] / (mass[nz] * mass[nz])
    h[nz] = (1.0 - alpha) * mass[nz] + alpha * (1.0 - hhi)
    return h


def budget_counts(p: np.ndarray, n: int) -> np.ndarray:
    """count[k] = round(p[k] * n) by largest-remainder rounding; the counts sum to n. -> int64 [n_levels]

    p is normalised to sum exactly 1 first (it may be off by up to 1e-4). Each level gets floor(p[k] * n);
    the missing blocks go one each to the levels with the largest fractional parts; equal fractional
    parts: the larger level first [ours] (the cautious choice: it keeps more tokens).
    """
    p = np.asarray(p, dtype=np.float32).astype(np.float64)
    total = 0.0
    for x in p:  # sequential, as the C++ does
        total += float(x)
    exact = p / total * n
    counts = np.floor(exact).astype(np.int64)
    frac = exact - counts
    missing = n - int(counts.sum())
    order = sorted(range(len(p)), key=lambda k: (-frac[k], -k))
    for j in range(missing):
        counts[order[j % len(p)]] += 1
    return counts


def block_budgets(h: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Tokens to keep per block -> int64 [n]: blocks ranked by h descending (ties: lower index first);
    the best count[b] blocks keep b, the next count[b/2] keep b/2, ..., the worst keep 1."""
    rank = sorted(range(len(h)), key=lambda j: (-h[j], j))
    keep = np.zeros(len(h), dtype=np.int64)
    pos = 0
    for k in reversed(range(len(counts))):
        for j in rank[pos : pos + counts[k]]:
            keep[j] = 2**k
        pos += counts[k]
    return keep


def top_t(x: np.ndarray, t: int) -> np.ndarray:
    """Indices of the t largest entries of x (ties: lower index first), in ascending index order."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    return np.sort(np.array(order[:t], dtype=np.int64))


def select(s: np.ndarray, p: np.ndarray, b: int, w: int, alpha: float) -> np.ndarray:
    """The global set G of one (layer, KV head): s [L] float32 scores, p [n_levels] configuration.

    -> int32 positions in [0, L_g), ascending. Empty when L_g <= 0 (the attention is then dense).
    """
    s = np.asarray(s, dtype=np.float32)
    check_block_size(b)
    check_config(np.asarray(p), b)
    if w < b:
        raise ValueError(f"tca: local window w = {w} is smaller than the block size b = {b}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"tca: alpha = {alpha} is not in [0, 1]")
    L_g = global_len(len(s), b, w)
    n = L_g // b
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    h = block_scores(s[:L_g], b, alpha)
    keep = block_budgets(h, budget_counts(p, n))
    G = [j * b + top_t(s[j * b : (j + 1) * b], int(keep[j])) for j in range(n)]
    return np.concatenate(G).astype(np.int32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two index sets (1 when both are empty): how close two selections are when
    near-tied scores (fp16 on a GPU) may legitimately swap a few tokens (spec 9)."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b) if a | b else 1.0


# ---------------------------------------------------------------------------------------------------
# Section 5: which keys each query attends to


def prefill_mask(L: int, G: np.ndarray, L_g: int, w: int) -> np.ndarray:
    """bool [L, L]: query i sees key k <= i when k is in the tail [L_g, L), in [i - w + 1, i], or in G."""
    i = np.arange(L)[:, None]
    k = np.arange(L)[None, :]
    in_G = np.zeros(L, dtype=bool)
    in_G[np.asarray(G, dtype=np.int64)] = True
    return (k <= i) & ((k >= max(L_g, 0)) | (k > i - w) | in_G[None, :])


def attended_keys(i: int, G: np.ndarray, L_g: int, w: int) -> np.ndarray:
    """The key positions query i attends to, ascending and without repeats (the gathered form)."""
    tail = range(max(L_g, 0), i + 1)
    window = range(max(i - w + 1, 0), i + 1)
    return np.array(sorted(set(tail) | set(window) | {int(g) for g in G if g <= i}), dtype=np.int64)


def dense_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Exact softmax attention under a boolean mask, with GQA (query head h uses KV head h // (H / Hkv)).

    Q [L, H, d], K and V [L, Hkv, d], mask [L, L] or [Hkv, L, L] (True = attend) -> out [L, H, d] fp64.
    """
    L, H, d = Q.shape
    n_head_kv = K.shape[1]
    mask = np.broadcast_to(mask, (n_head_kv, L, L))
    out = np.zeros((L, H, d))
    for h in range(H):
        kv = h // (H // n_head_kv)
        logits = Q[:, h, :].astype(np.float64) @ K[:, kv, :].astype(np.float64).T / math.sqrt(d)
        logits = np.where(mask[kv], logits, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out[:, h, :] = probs @ V[:, kv, :].astype(np.float64)
    return out


def kept_after_prefill(G: np.ndarray, L_g: int, L: int) -> np.ndarray:
    """Positions a head's KV cache holds after prefill: G + tail [L_g, L), ascending int64."""
    return np.concatenate([np.asarray(G, dtype=np.int64), np.arange(max(L_g, 0), L, dtype=np.int64)])


def decode_keep(p: np.ndarray) -> int:
    """Tokens kept per compacted block during decode: t = max(1, floor(sum_k k * p[k])).

    As engine/tca_config.cpp, 1e-6 is added before flooring so that an expected count that is an integer
    up to fp32 rounding (say 4.9999998) is not floored to one less."""
    p = np.asarray(p, dtype=np.float32).astype(np.float64)
    expected = 0.0
    for k, x in enumerate(p):  # sequential, as the C++ does
        expected += 2**k * float(x)
    return max(1, math.floor(expected + 1e-6))


class DecodeCache:
    """One (layer, KV head)'s cache during decode: `global_` (kept positions) + `recent` (a FIFO)."""

    def __init__(self, G: np.ndarray, L: int, p: np.ndarray, b: int, w: int):
        L_g = global_len(L, b, w)
        self.global_ = [int(g) for g in G]
        self.recent = list(range(L_g, L))
        self.t = decode_keep(p)
        self.b = b
        self.w = w

    def __len__(self) -> int:
        return len(self.global_) + len(self.recent)

    def positions(self) -> np.ndarray:
        return np.array(self.global_ + self.recent, dtype=np.int64)

    def append(self, position: int) -> bool:
        """Adds a new token; returns True when a compaction is due (recent holds w + b tokens)."""
        self.recent.append(position)
        return len(self.recent) == self.w + self.b

    def compact(self, probs: np.ndarray) -> np.ndarray:
        """probs [b]: this step's attention probabilities of the oldest b recent tokens.

        Keeps their top t (ties: the older first), moves them to `global_`, drops the rest.
        -> the kept positions, ascending."""
        if len(self.recent) != self.w + self.b or len(probs) != self.b:
            raise ValueError("tca: compaction needs w + b recent tokens and b probabilities")
        block = self.recent[: self.b]
        kept = [block[i] for i in top_t(np.asarray(probs, dtype=np.float32), self.t)]
        self.global_ += kept
        self.recent = self.recent[self.b :]
        return np.array(kept, dtype=np.int64)


def expected_cache_size(L: int, n_past: int, p: np.ndarray, b: int, w: int) -> int:
    """Tokens a head caches after a prefill of L tokens and decoding up to n_past tokens in all."""
    L_g = global_len(L, b, w)
    n_global = int(np.sum(budget_counts(p, L_g // b) * levels(b))) if L_g > 0 else 0
    n_recent = (L - L_g) + (n_past - L)
    n_compact = max(0, (n_recent - w) // b)
    return n_global + n_compact * decode_keep(p) + n_recent - n_compact * b


# ---------------------------------------------------------------------------------------------------
# Section 7: offline calibration


def candidates(b: int, sigma: float = 1.0, n_mu: int = 13) -> np.ndarray:
    """Candidate configurations -> float32 [n_mu + 1, n_levels]: log-Gaussians over log2(level) with mu
    evenly spaced in [0, log2 b], then the dense one (every block keeps b)."""
    log_level = np.log2(levels(b)).astype(np.float64)
    rows = []
    for mu in np.linspace(0.0, log_level[-1], n_mu):
        p = np.exp(-((log_level - mu) ** 2) / (2 * sigma**2))
        rows.append(p / p.sum())
    rows.append(np.eye(len(log_level))[-1])
    return np.array(rows, dtype=np.float32)


def density(p: np.ndarray, b: int) -> float:
    """Expected kept share of the global region: sum_k k * p[k] / b."""
    return float(np.dot(levels(b), np.asarray(p, dtype=np.float64))) / b


def column_means(Q: np.ndarray, K: np.ndarray, chunk: int = 64) -> np.ndarray:
    """m [n_head_kv, L]: the mean causal attention key k receives over the queries that see it (i >= k),
    averaged over the group's query heads. Q [L, n_head, d], K [L, n_head_kv, d].

    Two passes over chunks of queries, never holding [L, L]: the log-sum-exp of each query row first,
    then the column sums of exp(logit - lse)."""
    L, n_head, d = Q.shape
    n_head_kv = K.shape[1]
    m = np.zeros((n_head_kv, L))
    for h in range(n_head):
        kv = h // (n_head // n_head_kv)
        q = Q[:, h, :].astype(np.float64)
        k = K[:, kv, :].astype(np.float64)
        lse = np.zeros(L)
        for pass_ in range(2):
            col_sum = np.zeros(L)
            for i0 in range(0, L, chunk):
                i = np.arange(i0, min(i0 + chunk, L))
                logits = q[i] @ k.T / math.sqrt(d)  # [chunk, L]
                logits[np.arange(L)[None, :] > i[:, None]] = -np.inf
                if pass_ == 0:
                    row_max = logits.max(axis=1)
                    lse[i] = row_max + np.log(np.exp(logits - row_max[:, None]).sum(axis=1))
                else:
                    col_sum += np.exp(logits - lse[i][:, None]).sum(axis=0)
        m[kv] += col_sum / (L - np.arange(L))
    return m / (n_head // n_head_kv)


def column_means_dense(Q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """column_means computed from the full [L, L] causal attention matrix (small L only, for tests)."""
    L, n_head, d = Q.shape
    n_head_kv = K.shape[1]
    causal = np.tril(np.ones((L, L), dtype=bool))
    m = np.zeros((n_head_kv, L))
    for h in range(n_head):
        kv = h // (n_head // n_head_kv)
        logits = Q[:, h, :].astype(np.float64) @ K[:, kv, :].astype(np.float64).T / math.sqrt(d)
        logits = np.where(causal, logits, -np.inf)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        m[kv] += probs.sum(axis=0) / causal.sum(axis=0)
    return m / (n_head // n_head_kv)


def last_scores(Q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """s [n_head_kv, L]: section 4 step 1 scores of the last query, per KV head."""
    n_head, n_head_kv = Q.shape[1], K.shape[1]
    group = n_head // n_head_kv
    return np.stack([scores(Q[-1, kv * group : (kv + 1) * group], K[:, kv]) for kv in range(n_head_kv)])


def retained(m: np.ndarray, S: np.ndarray) -> float:
    """r = sum_{k in S} m_k / sum_k m_k: the share of the column-mean attention that the kept set S holds."""
    return float(np.sum(m[np.asarray(S, dtype=np.int64)]) / np.sum(m))


def choose(cands: np.ndarray, m: np.ndarray, s: np.ndarray, b: int, w: int, alpha: float, tau: float) -> int:
    """Index of the chosen candidate for one (layer, KV head) with statistics m, s [L]."""
    L = len(s)
    L_g = global_len(L, b, w)
    r = [retained(m, kept_after_prefill(select(s, p, b, w, alpha), L_g, L)) for p in cands]
    return choose_from(r, cands, b, tau)


def choose_from(r: np.ndarray, cands: np.ndarray, b: int, tau: float) -> int:
    """Given each candidate's retained share r [M]: the one with the smallest density among those with
    r >= tau (ties: the lower index); the densest candidate when none qualifies."""
    dens = [density(p, b) for p in cands]
    ok = [c for c in range(len(cands)) if r[c] >= tau]
    if not ok:
        return int(np.argmax(dens))
    return min(ok, key=lambda c: (dens[c], c))
