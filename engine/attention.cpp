#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "fp16.h"
#include "vec.h"

namespace tca {

namespace {

// Keys of one query, in the order they are visited: extra[0, n_extra) then [lo, hi).
struct key_list {
    const int32_t * extra;
    int64_t n_extra;
    int64_t lo;
    int64_t hi;

    int64_t size() const { return n_extra + (hi - lo); }
    int64_t at(int64_t t) const { return t < n_extra ? extra[t] : lo + (t - n_extra); }
};

key_list keys_of(const attn_plan & plan, int64_t i) {
    const int64_t lo = plan.lo[size_t(i)];
    const int64_t hi = plan.hi[size_t(i)];
    const auto m = std::lower_bound(plan.extra.begin(), plan.extra.end(), int32_t(lo)) - plan.extra.begin();
    return {plan.extra.data(), int64_t(m), lo, hi};
}

// Online-softmax partial result of the G heads of a group over a span of keys:
// out_h = acc_h / l_h, where l_h = sum exp(s - m_h).
struct partial {
    std::vector<float> m;    // [G]
    std::vector<float> l;    // [G]
    std::vector<float> acc;  // [G, head_dim]
};

#if defined(__AVX512F__)
// The four horizontal sums of a, b, c, d.
inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    // Per 128-bit lane: ab = [a0+a2, b0+b2, a1+a3, b1+b3], cd likewise, then abcd = [a, b, c, d] partials.
    const __m512 ab   = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd   = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 s8   = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
}

inline __m512 load_fp16(const uint16_t * p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}

// scores[g, t] = scale * q_g . k_t for the G heads and the keys [t0, t0 + n) of the list; D = head_dim.
template <int D>
void span_scores_avx512(const float * q, int n_group, float scale, const kv_head & h, const key_list & keys,
                        int64_t t0, int64_t n, float * scores) {
    constexpr int V = D / 16;
    for (int g = 0; g < n_group; ++g) {
        __m512 qv[V];
        for (int c = 0; c < V; ++c) {
            qv[c] = _mm512_mul_ps(_mm512_loadu_ps(q + g * D + 16 * c), _mm512_set1_ps(scale));
        }
        float * s = scores + size_t(g) * size_t(n);
        int64_t t = 0;
        for (; t + 4 <= n; t += 4) {
            __m512 acc[4];
            for (int j = 0; j < 4; ++j) {
                const uint16_t * kr = &h.k[size_t(keys.at(t0 + t + j)) * D];
                acc[j]              = _mm512_mul_ps(qv[0], load_fp16(kr));
                for (int c = 1; c < V; ++c) {
                    acc[j] = _mm512_fmadd_ps(qv[c], load_fp16(kr + 16 * c), acc[j]);
                }
            }
            _mm_storeu_ps(s + t, hsum4(acc[0], acc[1], acc[2], acc[3]));
        }
        for (; t < n; ++t) {
            const uint16_t * kr = &h.k[size_t(keys.at(t0 + t)) * D];
            __m512 acc          = _mm512_mul_ps(qv[0], load_fp16(kr));
            for (int c = 1; c < V; ++c) {
                acc = _mm512_fmadd_ps(qv[c], load_fp16(kr + 16 * c), acc);
            }
            s[t] = _mm512_reduce_add_ps(acc);
        }
    }
}

// acc[g, :] = sum_t p[g, t] v_t over the keys [t0, t0 + n) of the list; D = head_dim.
template <int D>
void span_values_avx512(const float * p, int n_group, const kv_head & h, const key_list & keys, int64_t t0,
                        int64_t n, float * acc) {
    constexpr int V = D / 16;
    for (int g = 0; g < n_group; ++g) {
        const float * pg = p + size_t(g) * size_t(n);
        __m512 a0[V], a1[V];  // two chains per vector: even and odd keys
        for (int c = 0; c < V; ++c) {
            a0[c] = _mm512_setzero_ps();
            a1[c] = _mm512_setzero_ps();
        }
        int64_t t = 0;
        for (; t + 2 <= n; t += 2) {
            const uint16_t * v0 = &h.v[size_t(keys.at(t0 + t)) * D];
            const uint16_t * v1 = &h.v[size_t(keys.at(t0 + t + 1)) * D];
            const __m512 w0     = _mm512_set1_ps(pg[t]);
            const __m512 w1     = _mm512_set1_ps(pg[t + 1]);
            for (int c = 0; c < V; ++c) {
                a0[c] = _mm512_fmadd_ps(w0, load_fp16(v0 + 16 * c), a0[c]);
                a1[c] = _mm512_fmadd_ps(w1, load_fp16(v1 + 16 * c), a1[c]);
            }
        }
        if (t < n) {
            const uint16_t * v0 = &h.v[size_t(keys.at(t0 + t)) * D];
            const __m512 w0     = _mm512_set1_ps(pg[t]);
            for (int c = 0; c < V; ++c) {
                a0[c] = _mm512_fmadd_ps(w0, load_fp16(v0 + 16 * c), a0[c]);
            }
        }
        for (int c = 0; c < V; ++c) {
            _mm512_storeu_ps(acc + size_t(g) * D + 16 * c, _mm512_add_ps(a0[c], a1[c]));
        }
    }
}

// The same two kernels for a whole group of G query heads at once: each fp16 K or V row is converted
// once for the G heads (the per-head kernels above convert it G times); used where the group's
// registers fit (G * D <= 256).
template <int D, int G>
void span_scores_group(const float * q, float scale, const kv_head & h, const key_list & keys, int64_t t0,
                       int64_t n, float * scores) {
    constexpr int V = D / 16;
    __m512 qv[G][V];
    for (int g = 0; g < G; ++g) {
        for (int c = 0; c < V; ++c) {
            qv[g][c] = _mm512_mul_ps(_mm512_loadu_ps(q + g * D + 16 * c), _mm512_set1_ps(scale));
        }
    }
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        __m512 acc[4][G];
        for (int j = 0; j < 4; ++j) {
            const uint16_t * kr = &h.k[size_t(keys.at(t0 + t + j)) * D];
            __m512 kv[V];
            for (int c = 0; c < V; ++c) {
                kv[c] = load_fp16(kr + 16 * c);
            }
            for (int g = 0; g < G; ++g) {
                acc[j][g] = _mm512_mul_ps(qv[g][0], kv[0]);
                for (int c = 1; c < V; ++c) {
                    acc[j][g] = _mm512_fmadd_ps(qv[g][c], kv[c], acc[j][g]);
                }
            }
        }
        for (int g = 0; g < G; ++g) {
            _mm_storeu_ps(scores + size_t(g) * n + t, hsum4(acc[0][g], acc[1][g], acc[2][g], acc[3][g]));
        }
    }
    for (; t < n; ++t) {
        const uint16_t * kr = &h.k[size_t(keys.at(t0 + t)) * D];
        for (int g = 0; g < G; ++g) {
            __m512 acc = _mm512_mul_ps(qv[g][0], load_fp16(kr));
            for (int c = 1; c < V; ++c) {
                acc = _mm512_fmadd_ps(qv[g][c], load_fp16(kr + 16 * c), acc);
            }
            scores[size_t(g) * n + t] = _mm512_reduce_add_ps(acc);
        }
    }
}

template <int D, int G>
void span_values_group(const float * p, const kv_head & h, const key_list & keys, int64_t t0, int64_t n,
                       float * acc) {
    constexpr int V = D / 16;
    __m512 a[G][V];
    for (int g = 0; g < G; ++g) {
        for (int c = 0; c < V; ++c) {
            a[g][c] = _mm512_setzero_ps();
        }
    }
    for (int64_t t = 0; t < n; ++t) {
        const uint16_t * vr = &h.v[size_t(keys.at(t0 + t)) * D];
        __m512 vv[V];
        for (int c = 0; c < V; ++c) {
            vv[c] = load_fp16(vr + 16 * c);
        }
        for (int g = 0; g < G; ++g) {
            const __m512 w = _mm512_set1_ps(p[size_t(g) * n + t]);
            for (int c = 0; c < V; ++c) {
                a[g][c] = _mm512_fmadd_ps(w, vv[c], a[g][c]);
            }
        }
    }
    for (int g = 0; g < G; ++g) {
        for (int c = 0; c < V; ++c) {
            _mm512_storeu_ps(acc + size_t(g) * D + 16 * c, a[g][c]);
        }
    }
}

// The group kernels for (head_dim, group size), or nullptr where the per-head ones serve.
using scores_fn = void (*)(const float *, float, const kv_head &, const key_list &, int64_t, int64_t,
                           float *);
using values_fn = void (*)(const float *, const kv_head &, const key_list &, int64_t, int64_t, float *);

scores_fn group_scores_kernel(int d, int n_group) {
    if (d == 64) {
        switch (n_group) {
            case 2:
                return span_scores_group<64, 2>;
            case 3:
                return span_scores_group<64, 3>;
            case 4:
                return span_scores_group<64, 4>;
            default:
                return nullptr;
        }
    }
    if (d == 128 && n_group == 2) {
        return span_scores_group<128, 2>;
    }
    return nullptr;
}

values_fn group_values_kernel(int d, int n_group) {
    if (d == 64) {
        switch (n_group) {
            case 2:
                return span_values_group<64, 2>;
            case 3:
                return span_values_group<64, 3>;
            case 4:
                return span_values_group<64, 4>;
            default:
                return nullptr;
        }
    }
    if (d == 128 && n_group == 2) {
        return span_values_group<128, 2>;
    }
    return nullptr;
}
#endif

// scores[g, t] = scale * q_g . k_t, any head_dim.
void span_scores(const float * q, int n_group, int d, float scale, const kv_head & h, const key_list & keys,
                 int64_t t0, int64_t n, float * scores, std::vector<float> & row) {
#if defined(__AVX512F__)
    if (const scores_fn group = group_scores_kernel(d, n_group)) {
        return group(q, scale, h, keys, t0, n, scores);
    }
    if (d == 64) {
        return span_scores_avx512<64>(q, n_group, scale, h, keys, t0, n, scores);
    }
    if (d == 128) {
        return span_scores_avx512<128>(q, n_group, scale, h, keys, t0, n, scores);
    }
#endif
    row.resize(size_t(d));
    for (int64_t t = 0; t < n; ++t) {
        fp16_to_fp32_row(&h.k[size_t(keys.at(t0 + t)) * size_t(d)], row.data(), d);
        for (int g = 0; g < n_group; ++g) {
            scores[size_t(g) * n + t] = vec_dot(q + size_t(g) * d, row.data(), d) * scale;
        }
    }
}

// acc[g, :] = sum_t p[g, t] v_t, any head_dim.
void span_values(const float * p, int n_group, int d, const kv_head & h, const key_list & keys, int64_t t0,
                 int64_t n, float * acc, std::vector<float> & row) {
#if defined(__AVX512F__)
    if (const values_fn group = group_values_kernel(d, n_group)) {
        return group(p, h, keys, t0, n, acc);
    }
    if (d == 64) {
        return span_values_avx512<64>(p, n_group, h, keys, t0, n, acc);
    }
    if (d == 128) {
        return span_values_avx512<128>(p, n_group, h, keys, t0, n, acc);
    }
#endif
    row.resize(size_t(d));
    std::fill(acc, acc + size_t(n_group) * d, 0.0f);
    for (int64_t t = 0; t < n; ++t) {
        fp16_to_fp32_row(&h.v[size_t(keys.at(t0 + t)) * size_t(d)], row.data(), d);
        for (int g = 0; g < n_group; ++g) {
            vec_axpy(acc + size_t(g) * d, row.data(), p[size_t(g) * n + t], d);
        }
    }
}

// Attends the G query rows q (row stride head_dim) to keys [t0, t1) of the list.
void attend_span(const float * q, int n_group, int d, float scale, const kv_head & h, const key_list & keys,
                 int64_t t0, int64_t t1, partial & st, std::vector<float> & scores,
                 std::vector<float> & row) {
    const int64_t n = t1 - t0;
    scores.resize(size_t(n_group) * size_t(n));
    st.m.assign(size_t(n_group), -INFINITY);
    st.l.assign(size_t(n_group), 0.0f);
    st.acc.assign(size_t(n_group) * size_t(d), 0.0f);
    if (n == 0) {
        return;
    }
    span_scores(q, n_group, d, scale, h, keys, t0, n, scores.data(), row);
    for (int g = 0; g < n_group; ++g) {
        float * s       = &scores[size_t(g) * n];
        st.m[size_t(g)] = *std::max_element(s, s + n);
        st.l[size_t(g)] = vec_exp_sum(s, n, st.m[size_t(g)]);
    }
    span_values(scores.data(), n_group, d, h, keys, t0, n, st.acc.data(), row);
}

// Folds b into a (both over disjoint key spans of the same queries).
void merge(partial & a, const partial & b, int n_group, int d) {
    for (int g = 0; g < n_group; ++g) {
        const float m       = std::max(a.m[size_t(g)], b.m[size_t(g)]);
        const float fa      = a.m[size_t(g)] == -INFINITY ? 0.0f : std::exp(a.m[size_t(g)] - m);
        const float fb      = b.m[size_t(g)] == -INFINITY ? 0.0f : std::exp(b.m[size_t(g)] - m);
        a.l[size_t(g)]      = a.l[size_t(g)] * fa + b.l[size_t(g)] * fb;
        a.m[size_t(g)]      = m;
        float * acc_a       = &a.acc[size_t(g) * d];
        const float * acc_b = &b.acc[size_t(g) * d];
        for (int c = 0; c < d; ++c) {
            acc_a[c] = acc_a[c] * fa + acc_b[c] * fb;
        }
    }
}

void write_out(const partial & st, int n_group, int d, float * out) {
    for (int g = 0; g < n_group; ++g) {
        // l > 0 whenever the query has at least one key; a query with none (never planned) writes zeros.
        const float inv = st.l[size_t(g)] > 0.0f ? 1.0f / st.l[size_t(g)] : 0.0f;
        for (int c = 0; c < d; ++c) {
            out[size_t(g) * d + c] = st.acc[size_t(g) * d + c] * inv;
        }
    }
}

}  // namespace

void attention_cpu(const attn_params & p, const kv_head * heads, const attn_plan * plans,
                   thread_pool & pool) {
    const int d           = p.head_dim;
    const int n_group     = p.n_head / p.n_head_kv;
    const int64_t n_items = int64_t(p.n_head_kv) * p.n_q;

    // With few (query, group) pairs - decode - the keys of each pair are split into spans processed in
    // parallel and merged; with many, each pair is one work item.
    int64_t n_split = 1;
    if (n_items < 4 * int64_t(pool.size())) {
        int64_t n_keys_max = 0;
        for (int64_t j = 0; j < n_items; ++j) {
            n_keys_max = std::max(n_keys_max, keys_of(plans[j % p.n_head_kv], j / p.n_head_kv).size());
        }
        const int64_t k_min_span = 256;
        n_split                  = std::clamp<int64_t>((4 * pool.size() + n_items - 1) / n_items, 1,
                                                       std::max<int64_t>(1, n_keys_max / k_min_span));
    }

    // Work items are claimed one at a time, latest queries (the longest key lists under a causal mask)
    // first, so the threads finish together; partial states are kept only when spans must be merged.
    const int64_t n_work = n_items * n_split;
    std::vector<partial> partials(size_t(n_split > 1 ? n_work : 0));
    std::atomic<int64_t> next{0};
    pool.parallel_for(pool.size(), [&](int64_t, int64_t, int) {
        std::vector<float> scores;
        std::vector<float> row;
        partial local;
        for (int64_t claimed; (claimed = next.fetch_add(1, std::memory_order_relaxed)) < n_work;) {
            const int64_t w     = n_work - 1 - claimed;
            const int64_t item  = w / n_split;
            const int64_t part  = w % n_split;
            const int ig        = int(item % p.n_head_kv);
            const int64_t i     = item / p.n_head_kv;
            const key_list keys = keys_of(plans[ig], i);
            const int64_t n     = keys.size();
            const int64_t t0    = n * part / n_split;
            const int64_t t1    = n * (part + 1) / n_split;
            const size_t row0   = (size_t(i) * p.n_head + size_t(ig) * n_group) * d;
            partial & st        = n_split > 1 ? partials[size_t(w)] : local;
            attend_span(p.q + row0, n_group, d, p.scale, heads[ig], keys, t0, t1, st, scores, row);
            if (n_split == 1) {
                write_out(st, n_group, d, p.out + row0);
            }
        }
    });
    if (n_split > 1) {
        for (int64_t item = 0; item < n_items; ++item) {
            partial & st = partials[size_t(item * n_split)];
            for (int64_t part = 1; part < n_split; ++part) {
                merge(st, partials[size_t(item * n_split + part)], n_group, d);
            }
            const int ig    = int(item % p.n_head_kv);
            const int64_t i = item / p.n_head_kv;
            write_out(st, n_group, d, p.out + (size_t(i) * p.n_head + size_t(ig) * n_group) * d);
        }
    }
}

void attention_group_probs(const float * q, int n_group, int head_dim, float scale, const kv_head & head,
                           int64_t norm_begin, int64_t norm_end, int64_t out_begin, int64_t out_end,
                           float * out) {
    const int64_t n = norm_end - norm_begin;
    std::vector<float> s(static_cast<size_t>(n));
    std::vector<float> row(static_cast<size_t>(head_dim));
    std::fill(out, out + (out_end - out_begin), 0.0f);
    for (int g = 0; g < n_group; ++g) {
        float m = -INFINITY;
        for (int64_t t = 0; t < n; ++t) {
            fp16_to_fp32_row(&head.k[size_t(norm_begin + t) * head_dim], row.data(), head_dim);
            s[size_t(t)] = vec_dot(q + size_t(g) * head_dim, row.data(), head_dim) * scale;
            m            = std::max(m, s[size_t(t)]);
        }
        double l = 0.0;
        for (int64_t t = 0; t < n; ++t) {
            s[size_t(t)] = std::exp(s[size_t(t)] - m);
            l += s[size_t(t)];
        }
        const float w = float(1.0 / (l * n_group));
        for (int64_t t = out_begin; t < out_end; ++t) {
            out[t - out_begin] += s[size_t(t - norm_begin)] * w;
        }
    }
}

}  // namespace tca
