// Shared basics of the CUDA backend: error checks that throw tca::error, and device buffers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "common.h"

namespace tca {

// Throws tca::error naming the failed call, its source line and CUDA's own description.
inline void cuda_check(cudaError_t err, const char * what, const char * file, int line) {
    if (err != cudaSuccess) {
        fail("CUDA error in %s (%s:%d): %s (%s)", what, file, line, cudaGetErrorString(err),
             cudaGetErrorName(err));
    }
}

#define CUDA_CHECK(call) ::tca::cuda_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports a bad configuration (and, with the stream synchronised, a fault).
#define CUDA_CHECK_LAUNCH(name) ::tca::cuda_check(cudaGetLastError(), name, __FILE__, __LINE__)

// Number of multiprocessors of the current device (read once per process and device).
int cuda_sm_count();

// Programmatic dependent launch (compute capability 9.0+): a kernel started with launch_pdl may start while
// the previous kernel in the stream still runs; it must call pdl_wait() before it reads anything that
// kernel wrote or writes anything it reads. The decode path's kernels call pdl_trigger() first thing, to
// let their successor's CTAs be scheduled at once (the successor's pdl_wait still waits for the whole
// kernel and its memory). Both are no-ops on older devices.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Whether the current device runs programmatic dependent launches (read once per process and device).
bool cuda_pdl_supported();

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent launch where the
// device has them: the kernel must pdl_wait() before it touches memory the previous kernel uses.
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args... args) {
    cudaLaunchAttribute attr{};
    attr.id                                         = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim          = grid;
    cfg.blockDim         = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream           = stream;
    cfg.attrs            = &attr;
    cfg.numAttrs         = cuda_pdl_supported() ? 1 : 0;
    cuda_check(cudaLaunchKernelEx(&cfg, kernel, args...), "cudaLaunchKernelEx", __FILE__, __LINE__);
}

#ifdef __CUDACC__  // device code (the header is also read by host C++ files)
// The sum of v over the CTA (whole warps), returned to every thread. Once per kernel: its shared slots
// are not released for a second call.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float s_red[32];
    for (int o = 16; o > 0; o /= 2) {
        v += __shfl_xor_sync(0xffffffff, v, o);
    }
    if (threadIdx.x % 32 == 0) {
        s_red[threadIdx.x / 32] = v;
    }
    __syncthreads();
    float sum = 0.0f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) {
        sum += s_red[w];
    }
    return sum;
}
#endif

inline int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

}  // namespace tca
