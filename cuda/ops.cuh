// Element-wise and row-wise operations of the forward pass on the GPU (engine/ops.h semantics).
// All pointers are device memory; activations are fp32 row-major.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tca {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * g;  x, out [n_rows, n_cols] (may alias)
void rms_norm_cuda(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                   cudaStream_t stream);

// y[r, :] += b;  y [n_rows, n_cols]
void add_bias_cuda(float * y, const float * b, int64_t n_rows, int64_t n_cols, cudaStream_t stream);

// x += y, then out = rms_norm(x) * g (rms_norm_cuda's rule);  x, y, out [n_rows, n_cols], out may alias y.
void add_rms_norm_cuda(float * x, const float * y, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                       float * out, cudaStream_t stream);

// gate = silu(gate) * up over n values
void swiglu_cuda(float * gate, const float * up, int64_t n, cudaStream_t stream);

// Rotates the first n_rot dims of every head in place: q [n_tok, n_head_q, head_dim] and k [n_tok, n_head_k,
// head_dim] (k may be null when n_head_k is 0), pos [n_tok]. The angle of pair i is pos * scale *
// base^(-2i/n_rot) / freq_factors[i] (freq_factors [n_rot/2] or null), in double precision like the CPU
// tables. Pairs are (2i, 2i+1) when adjacent, else (i, i + n_rot/2).
void rope_cuda(float * q, int n_head_q, float * k, int n_head_k, int64_t n_tok, int head_dim, int n_rot,
               const int32_t * pos, float base, float scale, const float * freq_factors, bool adjacent,
               cudaStream_t stream);

}  // namespace tca
