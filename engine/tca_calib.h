// TCA calibration statistics (TCA_SPEC.md section 7.2) of one layer from a dense forward pass, on the CPU:
// per KV head, the column means m of the causal attention matrix and the last query's scores s. Checked
// against tca_reference.column_means / last_scores. The candidates are then simulated by tca_simulate.
#pragma once

#include <cstdint>

#include "thread_pool.h"

namespace tca {

// One query head h of a layer. Q [L, n_head, head_dim], K [L, n_head_kv, head_dim]: fp32, post-RoPE;
// query head h reads KV head h / (n_head / n_head_kv); logits are q . k / sqrt(head_dim), causal.
// col_mean [L]: column sums of the attention matrix divided by the number of queries that see each key
// (L - k); last [L]: the probabilities of the last query (its row of the matrix).
// Work O(L^2 head_dim), memory O(L): the [L, L] matrix is never held.
void tca_calib_head(const float * Q, const float * K, int64_t L, int n_head, int n_head_kv, int head_dim,
                    int h, double * col_mean, double * last);

// All heads of a layer, group means per KV head: m [n_head_kv, L] and s [n_head_kv, L].
// The query heads are spread over the pool; the group means are summed in head order, so the result
// does not depend on the number of threads. Throws tca::error on bad shapes or non-finite inputs.
void tca_calib_layer(const float * Q, const float * K, int64_t L, int n_head, int n_head_kv, int head_dim,
                     float * m, float * s, thread_pool & pool);

}  // namespace tca
