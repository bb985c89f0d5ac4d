#include "bench_util.cuh"

#include <memory>

#include "common.cuh"
#include "device_memory.cuh"

namespace tca {

namespace {

__device__ uint32_t hash32(uint32_t seed, uint64_t i) {
    uint32_t h = seed * 0x9E3779B9u ^ uint32_t(i) * 0x85EBCA6Bu ^ uint32_t(i >> 32) * 0xC2B2AE35u;
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

template <typename T>
__global__ void fill_uniform_kernel(T * x, int64_t n, uint32_t seed, float lo, float hi) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float u = float(hash32(seed, uint64_t(i)) >> 8) * (1.0f / 16777216.0f);
        x[i]          = T(lo + (hi - lo) * u);
    }
}

__global__ void fill_bytes_kernel(uint8_t * x, int64_t n, uint32_t seed, int max_byte) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] = uint8_t(hash32(seed, uint64_t(i)) % uint32_t(max_byte + 1));
    }
}

}  // namespace

void fill_uniform_f32_cuda(float * x, int64_t n, uint32_t seed, float lo, float hi, cudaStream_t stream) {
    fill_uniform_kernel<float><<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(x, n, seed, lo, hi);
    CUDA_CHECK_LAUNCH("fill_uniform_kernel");
}

void fill_uniform_f16_cuda(__half * x, int64_t n, uint32_t seed, float lo, float hi, cudaStream_t stream) {
    fill_uniform_kernel<__half><<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(x, n, seed, lo, hi);
    CUDA_CHECK_LAUNCH("fill_uniform_kernel");
}

void fill_bytes_cuda(uint8_t * x, int64_t n, uint32_t seed, int max_byte, cudaStream_t stream) {
    fill_bytes_kernel<<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(x, n, seed, max_byte);
    CUDA_CHECK_LAUNCH("fill_bytes_kernel");
}

std::vector<float> time_cuda(const std::function<void(int)> & fn, int n_warmup, int n_repeat,
                             cudaStream_t stream) {
    cudaEvent_t ev[2];
    CUDA_CHECK(cudaEventCreate(&ev[0]));
    CUDA_CHECK(cudaEventCreate(&ev[1]));
    std::vector<float> ms;
    for (int i = 0; i < n_warmup + n_repeat; ++i) {
        CUDA_CHECK(cudaEventRecord(ev[0], stream));
        fn(i);
        CUDA_CHECK(cudaEventRecord(ev[1], stream));
        CUDA_CHECK(cudaEventSynchronize(ev[1]));
        float t = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&t, ev[0], ev[1]));
        if (i >= n_warmup) {
            ms.push_back(t);
        }
    }
    CUDA_CHECK(cudaEventDestroy(ev[0]));
    CUDA_CHECK(cudaEventDestroy(ev[1]));
    return ms;
}

std::vector<float> time_cuda_graph(const std::function<void(cudaStream_t)> & fn, int n_warmup, int n_repeat) {
    const cuda_stream stream;
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
        fn(stream);
    } catch (...) {
        cudaStreamEndCapture(stream, &graph);  // ends the capture; the error in fn is the one to report
        cudaGraphDestroy(graph);
        throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    const std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph_owner(graph, cudaGraphDestroy);
    cudaGraphExec_t exec = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    const std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_owner(exec,
                                                                                      cudaGraphExecDestroy);
    return time_cuda([&](int) { CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, n_warmup, n_repeat, stream);
}

}  // namespace tca
