// Quantized weights on the GPU: matrix-vector products that read the ggml blocks directly (generation),
// dequantization to fp16 (prompt processing through cuBLAS), and embedding rows.
// A weight matrix [n_out, n_in] is in ggml layout: n_out rows of n_in elements packed in blocks.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "ggml_types.h"
#include "ops.cuh"

namespace tca {

struct qweight_cuda {
    ggml_type type;
    int64_t n_in;
    int64_t n_out;
    const void * data;  // device memory, n_out rows of row_bytes()

    size_t row_bytes() const;
};

// Whether these kernels read this type (F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K).
bool quant_cuda_supported(ggml_type type);

// Workspace of the matvec kernels: Q8_0, Q4_K and Q6_K quantize x to int8 per 32 values (like ggml's q8
// activations) and multiply in integers; the other types need none (0).
size_t matvec_cuda_work_bytes(const qweight_cuda & w);

// y[o] = sum_i w[o, i] * x[i];  x [n_in], y [n_out] fp32; work: matvec_cuda_work_bytes(w) bytes or null.
void matvec_cuda(const qweight_cuda & w, const float * x, float * y, void * work, cudaStream_t stream);

// The input of a matvec: x [n_in]; or, with part set, an RMS norm rms_norm(r) * g in deferred form: x holds
// r * g, part [n_part] partial sums of r's squares, and the matvec multiplies its products by
// 1 / sqrt(sum(part) / n_in + eps). The form is written by the product that computes r (matvec_out's
// norm_g) or by norm_prepare_cuda: the norm then costs no kernel of its own, its reduction riding in the
// kernels that read x anyway.
struct matvec_in {
    const float * x;
    const float * part = nullptr;
    int n_part         = 0;
    float eps          = 0.0f;
};

// One product of matvec_multi_cuda: y [w.n_out] = w x, plus bias [w.n_out] when it is not null; added to y
// instead when add is set (a residual). With norm_g [w.n_out] set, y is also written as the deferred form
// of rms_norm(y) * norm_g (matvec_in): xn [w.n_out] = y * norm_g and part [matvec_norm_parts(w)].
constexpr int kMatvecSegs = 3;
struct matvec_out {
    qweight_cuda w;
    const float * bias;
    float * y;
    bool add             = false;
    const float * norm_g = nullptr;
    float * xn           = nullptr;
    float * part         = nullptr;
};

// The partial sums a product with norm_g writes: one per CTA.
int matvec_norm_parts(const qweight_cuda & w);

// The products outs [n] (n <= kMatvecSegs) of one input: one launch per run of equal weight types, x
// quantized once when a type needs it; work: the largest matvec_cuda_work_bytes of the weights.
void matvec_multi_cuda(const matvec_out * outs, int n, const matvec_in & in, void * work,
                       cudaStream_t stream);

// Q, K and V of one token with RoPE and the K/V store in the epilogue: outs = {q, k, v} as
// matvec_multi_cuda, then what rope_store_cuda does for one token and KV heads [0, n_head_kv): q and k
// rotated in place, k and v stored in fp16 at dst.k[h] and dst.v[h]. Pairs must be adjacent (r.adjacent)
// and n_head_kv <= kRopeStoreHeads. Throws tca::error otherwise.
void matvec_qkv_rope_cuda(const matvec_out (&outs)[3], const matvec_in & in, void * work,
                          const rope_params & r, const kv_store_dst & dst, cudaStream_t stream);

// y[o] = silu(gate[o, :] . x) * (up[o, :] . x), one launch; gate and up of one type and shape.
void matvec_swiglu_cuda(const qweight_cuda & gate, const qweight_cuda & up, const matvec_in & in, float * y,
                        void * work, cudaStream_t stream);

// out [n_rows, n_in] fp16 = rows [row0, row0 + n_rows) of w, dequantized; out 16-byte aligned.
void dequantize_f16_cuda(const qweight_cuda & w, int64_t row0, int64_t n_rows, __half * out,
                         cudaStream_t stream);

// out[t, :] = row ids[t] of w, dequantized;  ids [n] (device), out [n, n_in] fp32.
void get_rows_cuda(const qweight_cuda & w, const int32_t * ids, int64_t n, float * out, cudaStream_t stream);

}  // namespace tca
