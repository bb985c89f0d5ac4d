// TCA calibration statistics of a whole model (TCA_SPEC.md section 7.2): one dense forward pass over the
// calibration sequence, recording per layer and KV head the column means m and the last query's scores s
// of the causal attention. tools/calibrate.py then simulates the candidates on them (tca_simulate).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model.h"

namespace tca {

struct calibration_result {
    int64_t n_tokens = 0;  // L
    std::vector<float> m;  // [n_layer, n_head_kv, L] column means of the attention matrix
    std::vector<float> s;  // [n_layer, n_head_kv, L] the last query's scores (group mean)
};

// Called after each layer's statistics are done, with the number of layers done and n_layer.
using calibration_progress = std::function<void(int n_done, int n_layer)>;

// Evaluates tokens [L] densely in one eval call of a fresh context (n_ctx = L), so that the layer hook
// sees every layer's post-RoPE q and k for all L tokens at once, and runs tca_calib_layer on them.
// Memory O(L) per head (the [L, L] attention matrix is never held); work O(L^2) per head.
// Throws tca::error for an empty sequence, L over the model's limits or a vocab-only model.
calibration_result calibration_stats(const model & mo, const int32_t * tokens, int64_t L, int n_threads,
                                     const calibration_progress & progress);

}  // namespace tca
