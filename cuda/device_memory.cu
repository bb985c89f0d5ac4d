#include "device_memory.cuh"

#include "common.cuh"

namespace tca {

namespace {

constexpr double k_mib = 1024.0 * 1024.0;

[[noreturn]] void fail_alloc(size_t bytes, const char * what, cudaError_t err) {
    fail_out_of_memory(strfmt("%s needs %.1f MiB", what, double(bytes) / k_mib), cudaGetErrorString(err));
}

}  // namespace

void fail_out_of_memory(const std::string & need, const char * why) {
    cudaGetLastError();  // clear the error so later calls do not report it
    size_t n_free  = 0;
    size_t n_total = 0;
    if (cudaMemGetInfo(&n_free, &n_total) != cudaSuccess) {
        cudaGetLastError();
        fail("CUDA out of memory: %s (%s)", need.c_str(), why);
    }
    fail("CUDA out of memory: %s, %.1f MiB of %.1f MiB are free (%s)", need.c_str(), double(n_free) / k_mib,
         double(n_total) / k_mib, why);
}

void * device_alloc(size_t bytes, const char * what) {
    void * p = nullptr;
    if (bytes == 0) {
        return nullptr;
    }
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        fail_alloc(bytes, what, err);
    }
    return p;
}

void trim_memory_pool(cudaStream_t stream) {
    cudaMemPool_t pool = nullptr;
    int dev            = 0;
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
}

void * device_alloc_async(size_t bytes, const char * what, cudaStream_t stream) {
    void * p = nullptr;
    if (bytes == 0) {
        return nullptr;
    }
    cudaError_t err = cudaMallocAsync(&p, bytes, stream);
    if (err != cudaSuccess) {
        cudaGetLastError();
        trim_memory_pool(stream);
        err = cudaMallocAsync(&p, bytes, stream);
    }
    if (err != cudaSuccess) {
        fail_alloc(bytes, what, err);
    }
    return p;
}

cuda_stream::cuda_stream() {
    const cudaError_t err = cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking);
    if (err == cudaErrorMemoryAllocation) {
        fail_out_of_memory("the CUDA context and stream could not be created", cudaGetErrorString(err));
    }
    CUDA_CHECK(err);
}

#ifdef TCA_HAVE_CUBLAS
cublas_handle::cublas_handle() {
    const cublasStatus_t st = cublasCreate(&h_);
    if (st == CUBLAS_STATUS_ALLOC_FAILED) {
        fail_out_of_memory("the cuBLAS handle could not be created", cublasGetStatusString(st));
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
        fail("device 'cuda': cublasCreate failed: %s", cublasGetStatusString(st));
    }
}
#endif

}  // namespace tca
