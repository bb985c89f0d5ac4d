// TCA in the forward pass (spec section 5): plans each head's sparse prefill attention from the selected
// global set, and decides what each head's cache keeps after prefill and after each decode step.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "attention.h"
#include "tca_config.h"

namespace tca {

// What one head keeps after an attention step: sorted cache indices, of which the first n_global are
// compacted for good. Empty `keep` with changed == false: keep everything.
struct tca_keep {
    bool changed = false;
    std::vector<int32_t> keep;
    int64_t n_global = 0;
};

// The group mean of one query's softmax probabilities over a head's entries (attention_group_probs in
// engine/attention.h, with the query rows bound by the caller): each row normalised over
// [norm_begin, norm_end), written for the entries [out_begin, out_end) into out [out_end - out_begin].
using tca_probs_fn = std::function<void(int64_t norm_begin, int64_t norm_end, int64_t out_begin,
                                        int64_t out_end, float * out)>;

// A chunk of n_new tokens, already appended to a head of n entries (the first n_global compacted),
// attended by its own queries: when the head's uncompacted region [n_global, n) is longer than w + b, the
// scores of the chunk's last query (probs) select the global set G; the plan attends each query to the
// compacted tokens, G, its window and the tail. Otherwise the plan is dense causal.
void tca_plan_prefill(const tca_config & cfg, const float * p, int64_t n, int64_t n_global, int64_t n_new,
                      const tca_probs_fn & probs, attn_plan & plan, tca_keep & keep);

// After a single-token decode step on a head of n entries: when the recent region [n_global, n) holds
// w + b tokens, its oldest b are scored with this step's probabilities and the top
// t = max(1, floor(sum_k k p[k])) are compacted.
void tca_decode_compact(const tca_config & cfg, const float * p, int64_t n, int64_t n_global,
                        const tca_probs_fn & probs, tca_keep & keep);

// Dense causal plan for n_new queries appended at cache indices [n - n_new, n).
void plan_dense(int64_t n, int64_t n_new, attn_plan & plan);

}  // namespace tca
