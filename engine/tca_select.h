// TCA token selection (TCA_SPEC.md sections 4, 5 and 7.3): the one selection code shared by the runtime
// (the CPU and CUDA backends compute the scores, then call tca_select) and by calibration (tca_simulate).
// It mirrors python/tca/tca_reference.py operation by operation, so that both give the same index sets:
// scores are fp32; block statistics are fp64, summed sequentially in position order; alpha and the
// configurations p are fp32 widened to fp64 where used. Deterministic; no threads, no global state.
#pragma once

#include <cstdint>
#include <vector>

namespace tca {

// The selection parameters (GGUF tca.block_size, tca.local_window, tca.alpha):
//   b      block size, a power of two in [1, 65536]; also the decode compaction period
//   w      local window, >= b
//   alpha  weight of block mass vs. in-block dispersion, in [0, 1]
// Throws tca::error naming the parameter unless all three are valid.
void tca_params_check(int b, int w, float alpha);

// Number of levels 1, 2, 4, ..., b: log2(b) + 1. Throws unless b is a valid block size.
int tca_n_levels(int b);

// Throws tca::error unless p [n_levels] (levels ascending) has n_levels == tca_n_levels(b) entries, all
// finite and >= 0, summing to 1 within 1e-4. `what` names the configuration in the message.
void tca_config_check(const float * p, int n_levels, int b, const char * what);

// L_g = floor((L - w) / b) * b: the length of the global region; 0 when L < w + b (attention is dense).
int64_t tca_global_len(int64_t L, int b, int w);

// Block scores of n_blocks whole blocks: s [n_blocks * b] -> h [n_blocks];
// h = (1 - alpha) * mass + alpha * (1 - hhi), h = 0 for a block of mass 0.
void tca_block_scores(const float * s, int64_t n_blocks, int b, float alpha, double * h);

// Largest-remainder rounding of p [n_levels] * n -> counts [n_levels] summing to n. p is normalised to
// sum 1 first; equal fractional parts give the extra block to the larger level first [ours].
void tca_budget_counts(const float * p, int n_levels, int64_t n, int64_t * counts);

// Tokens each block keeps: blocks ranked by h descending (ties: lower index first), the best counts[top]
// keep b, the next counts[top - 1] keep b/2, ..., the worst keep 1. h, keep [n_blocks].
void tca_block_budgets(const double * h, int64_t n_blocks, const int64_t * counts, int n_levels,
                       int32_t * keep);

// The global set G of one (layer, KV head): s [L] fp32 scores of the last query (finite, >= 0),
// p [n_levels] the head's configuration. Returns positions in [0, L_g), ascending; empty when L_g <= 0.
std::vector<int32_t> tca_select(const float * s, int64_t L, const float * p, int n_levels, int b, int w,
                                float alpha);

// As above into a caller buffer `out` with room for tca_global_len(L, b, w) entries; returns |G|.
int64_t tca_select_into(const float * s, int64_t L, const float * p, int n_levels, int b, int w, float alpha,
                        int32_t * out);

// Decode: indices of the t largest of probs [n] (ties: lower index first), ascending. 1 <= t <= n.
std::vector<int32_t> tca_pick_top(const float * probs, int n, int t);

// Calibration (spec 7.3): simulate candidates [n_cand, n_levels] on one (layer, KV head) with the last
// query's scores s [L] and the column means m [L]. For each candidate c, S = G + tail [L_g, L):
// r[c] = sum_{k in S} m[k] / sum_k m[k] and n_kept[c] = |S|.
void tca_simulate(const float * s, const float * m, int64_t L, const float * candidates, int n_cand,
                  int n_levels, int b, int w, float alpha, double * r, int64_t * n_kept);

}  // namespace tca
