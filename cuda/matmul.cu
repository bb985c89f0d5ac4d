#include "common.cuh"
#include "matmul.cuh"

namespace tca {

namespace {

void cublas_check(cublasStatus_t st, const char * what) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fail("cuBLAS error in %s: %s", what, cublasGetStatusString(st));
    }
}

__global__ void to_f16_kernel(const float * x, int64_t n, __half * out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = __float2half_rn(x[i]);
    }
}

}  // namespace

size_t matmul_cuda_work_bytes(const qweight_cuda & w, int64_t n_tok) {
    const int64_t n_w16 = w.type == ggml_type::F16 ? 0 : w.n_out;  // F16 weights are read in place
    return size_t(n_w16 + n_tok) * size_t(w.n_in) * sizeof(__half);
}

void matmul_cuda(cublasHandle_t handle, const qweight_cuda & w, const float * x, int64_t n_tok, float * y,
                 bool add, void * work, cudaStream_t stream) {
    if (n_tok <= 0) {
        return;
    }
    if (work == nullptr) {
        fail("matmul_cuda: needs a workspace of %zu bytes", matmul_cuda_work_bytes(w, n_tok));
    }
    const __half * w16 = static_cast<const __half *>(w.data);
    __half * x16       = static_cast<__half *>(work);
    if (w.type != ggml_type::F16) {
        __half * dq = x16;
        x16         = dq + w.n_out * w.n_in;
        dequantize_f16_cuda(w, 0, w.n_out, dq, stream);
        w16 = dq;
    }
    const int64_t n_x = n_tok * w.n_in;
    to_f16_kernel<<<unsigned(ceil_div(n_x, 256)), 256, 0, stream>>>(x, n_x, x16);
    CUDA_CHECK_LAUNCH("to_f16_kernel");

    // Column-major view: y^T [n_out, n_tok] = (w16 viewed [n_in, n_out])^T * (x16 viewed [n_in, n_tok]).
    const float alpha = 1.0f;
    const float beta  = add ? 1.0f : 0.0f;
    cublas_check(cublasSetStream(handle, stream), "cublasSetStream");
    cublas_check(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(w.n_out), int(n_tok), int(w.n_in), &alpha,
                              w16, CUDA_R_16F, int(w.n_in), x16, CUDA_R_16F, int(w.n_in), &beta, y,
                              CUDA_R_32F, int(w.n_out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
}

}  // namespace tca
