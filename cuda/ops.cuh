// Element-wise and row-wise operations of the forward pass on the GPU (engine/ops.h semantics).
// All pointers are device memory; activations are fp32 row-major.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tca {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * g;  x, out [n_rows, n_cols] (may alias)
void rms_norm_cuda(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                   cudaStream_t stream);

// The deferred form of rms_norm(x) * g for matvec_in (quant_matvec.cuh), per row: xn[r, :] = x[r, :] * g and
// part[r] = sum(x[r, :]^2) (one partial sum);  x, xn [n_rows, n_cols].
void norm_prepare_cuda(const float * x, const float * g, int64_t n_rows, int64_t n_cols, float * xn,
                       float * part, cudaStream_t stream);

// y[r, :] += b;  y [n_rows, n_cols]
void add_bias_cuda(float * y, const float * b, int64_t n_rows, int64_t n_cols, cudaStream_t stream);

// gate = silu(gate) * up over n values
void swiglu_cuda(float * gate, const float * up, int64_t n, cudaStream_t stream);

// RoPE with the CPU's rule (engine/ops.h): pair i of a head is rotated by the angle
// pos * scale * base^(-2i/n_rot) / freq_factors[i], computed in double precision like the CPU tables.
// Pairs are dims (2i, 2i+1) when adjacent, else (i, i + n_rot/2); dims from n_rot on are not rotated.
struct rope_params {
    int head_dim;
    int n_rot;  // even, <= head_dim
    float base;
    float scale;
    const float * freq_factors;  // [n_rot/2] or null
    const int32_t * pos;         // [n_tok] device
    bool adjacent;
};

// Where rope_store_cuda writes: fp16 rows of K and V for up to kRopeStoreHeads KV heads.
constexpr int kRopeStoreHeads = 32;
struct kv_store_dst {
    __half * k[kRopeStoreHeads];
    __half * v[kRopeStoreHeads];
};

// One launch for the KV heads [h0, h0 + n_heads) (n_heads <= kRopeStoreHeads): rotates q [n, n_head_q,
// head_dim] in place (pass n_head_q = 0 to leave q alone), rotates those heads of k [n, n_head_kv,
// head_dim] in place, and stores their k and v rows in fp16 at dst.k[h] + t * head_dim and dst.v[h] +
// t * head_dim for token t and head h0 + h. Throws tca::error for a bad n_rot or head count.
void rope_store_cuda(float * q, int n_head_q, float * k, const float * v, int64_t n, int n_head_kv, int h0,
                     int n_heads, const rope_params & r, const kv_store_dst & dst, cudaStream_t stream);

}  // namespace tca
