// Prompt-processing matmul: the weight is dequantized to fp16 and multiplied through cuBLAS (tensor cores,
// fp32 accumulation). Built only when cuBLAS is found (TCA_HAVE_CUBLAS).
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "quant_matvec.cuh"

namespace tca {

// Workspace of matmul_cuda: the fp16 weight [n_out, n_in] (none for F16 weights, read in place) and the
// fp16 activations [n_tok, n_in].
size_t matmul_cuda_work_bytes(const qweight_cuda & w, int64_t n_tok);

// y[t, o] = sum_i w[o, i] * x[t, i], or y[t, o] += that when add is set;  x [n_tok, n_in] fp32, y [n_tok,
// n_out] fp32. The activations are rounded to fp16 (their magnitude must stay below 65504).
void matmul_cuda(cublasHandle_t handle, const qweight_cuda & w, const float * x, int64_t n_tok, float * y,
                 bool add, void * work, cudaStream_t stream);

}  // namespace tca
