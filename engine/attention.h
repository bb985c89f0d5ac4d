// The CPU attention core. One kernel serves dense and TCA attention (STYLE.md practice 5): each query
// attends to a dense range of cache entries plus a sorted list of extra entries below that range.
#pragma once

#include <cstdint>
#include <vector>

#include "kv_cache.h"
#include "thread_pool.h"

namespace tca {

// Which cache entries the queries of one KV head attend to: query i sees entries [lo[i], hi[i]) and the
// entries of `extra` (sorted cache indices) that lie below lo[i]. Dense causal attention is extra = {}
// and lo = 0; TCA prefill passes the head's global set as `extra` (spec section 5).
struct attn_plan {
    std::vector<int32_t> extra;
    std::vector<int64_t> lo;  // [n_q]
    std::vector<int64_t> hi;  // [n_q]
};

struct attn_params {
    int           n_head;
    int           n_head_kv;
    int           head_dim;
    float         scale;  // 1/sqrt(head_dim)
    int64_t       n_q;
    const float * q;    // [n_q, n_head, head_dim]
    float *       out;  // [n_q, n_head, head_dim]
};

// heads: the layer's n_head_kv cache heads; plans: one per KV head. Exact softmax over each query's keys.
void attention_cpu(const attn_params & p, const kv_head * heads, const attn_plan * plans, thread_pool & pool);

// Group mean of the softmax probabilities of the query rows q [n_group, head_dim] (each row normalised
// over the cache entries [norm_begin, norm_end) of `head`), written for the entries [out_begin, out_end)
// into out [out_end - out_begin]. TCA uses it for the selection scores (spec 4.1) and for scoring the
// block that a decode step compacts (spec 5).
void attention_group_probs(const float * q, int n_group, int head_dim, float scale, const kv_head & head,
                           int64_t norm_begin, int64_t norm_end, int64_t out_begin, int64_t out_end,
                           float * out);

}  // namespace tca
