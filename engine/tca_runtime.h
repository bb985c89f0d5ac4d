// TCA in the forward pass (spec section 5): plans each head's sparse prefill attention from the selected
// global set, and decides what each head's cache keeps after prefill and after each decode step.
#pragma once

#include <cstdint>
#include <vector>

#include "attention.h"
#include "kv_cache.h"
#include "tca_config.h"

namespace tca {

// What one head keeps after an attention step: sorted cache indices, of which the first n_global are
// compacted for good. Empty `keep` with changed == false: keep everything.
struct tca_keep {
    bool                 changed  = false;
    std::vector<int32_t> keep;
    int64_t              n_global = 0;
};

// A chunk of n_new tokens, already appended to head h, attended by its own queries: when the head's
// uncompacted region [n_global, n) is longer than w + b, the last query's scores (q_last: the group's
// query rows [n_group, head_dim] of the chunk's last token) select the global set G; the plan attends each
// query to the compacted tokens, G, its window and the tail. Otherwise the plan is dense causal.
void tca_plan_prefill(const tca_config & cfg, const float * p, const kv_head & h, int64_t n_new,
                      const float * q_last, int n_group, int head_dim, float scale, attn_plan & plan,
                      tca_keep & keep);

// After a single-token decode step on head h: when the recent region holds w + b tokens, its oldest b
// are scored with this step's probabilities and the top t = max(1, floor(sum_k k p[k])) are compacted.
void tca_decode_compact(const tca_config & cfg, const float * p, const kv_head & h, const float * q,
                        int n_group, int head_dim, float scale, tca_keep & keep);

// Dense causal plan for n_new queries appended at cache indices [h.n - n_new, h.n).
void plan_dense(const kv_head & h, int64_t n_new, attn_plan & plan);

}  // namespace tca
