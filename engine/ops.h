// Element-wise and row-wise operations of the forward pass on the CPU, multi-threaded over rows.
#pragma once

#include <cstdint>
#include <vector>

#include "thread_pool.h"

namespace tca {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * g;  x, out [n_rows, n_cols] (may alias)
void op_rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                 thread_pool & pool);

// y[r, :] += b;  y [n_rows, n_cols]
void op_add_bias(float * y, const float * b, int64_t n_rows, int64_t n_cols);

// x += y, element-wise over n values
void op_add(float * x, const float * y, int64_t n);

// gate = silu(gate) * up, element-wise over n values (in place in gate)
void op_swiglu(float * gate, const float * up, int64_t n, thread_pool & pool);

// Rotary position embedding tables for a batch: cos/sin [n_tok, n_rot/2] of angle
// pos * scale * base^(-2i/n_rot) / freq_factors[i] (freq_factors may be null).
struct rope_table {
    int64_t            n_tok = 0;
    int                n_rot = 0;
    std::vector<float> cos;
    std::vector<float> sin;
};
void rope_table_init(rope_table & t, const int32_t * pos, int64_t n_tok, int n_rot, float base, float scale,
                     const float * freq_factors);

// Rotates the first n_rot dims of every head in place: x [n_tok, n_head, head_dim]. Pairs are
// (2i, 2i+1) when adjacent, else (i, i + n_rot/2).
void op_rope(float * x, int64_t n_tok, int n_head, int head_dim, const rope_table & t, bool adjacent);

}  // namespace tca
