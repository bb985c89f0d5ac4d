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

inline int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

}  // namespace tca
