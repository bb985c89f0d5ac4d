// Device-side helpers for tests and benchmarks: deterministic pseudo-random fills (so that large inputs
// need no host transfer) and timing of a launch sequence with CUDA events.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace tca {

// Uniform values in [lo, hi) from a hash of (seed, index).
void fill_uniform_f32_cuda(float * x, int64_t n, uint32_t seed, float lo, float hi, cudaStream_t stream);
void fill_uniform_f16_cuda(__half * x, int64_t n, uint32_t seed, float lo, float hi, cudaStream_t stream);
// Bytes in [0, max_byte]: with max_byte <= 0x3B any two of them read as an fp16 are finite and positive.
void fill_bytes_cuda(uint8_t * x, int64_t n, uint32_t seed, int max_byte, cudaStream_t stream);

// Runs fn(i) for i in [0, n_warmup + n_repeat) on the stream; returns the times of the last n_repeat
// runs in milliseconds, each between two events.
std::vector<float> time_cuda(const std::function<void(int)> & fn, int n_warmup, int n_repeat,
                             cudaStream_t stream);

// Captures fn(stream) once as a CUDA graph on a stream of its own and times n_repeat launches of the graph
// after n_warmup (milliseconds each). Without the host's launch calls between them (~4 us each on the
// device machine) short kernels run back to back as they would in a captured decode step.
std::vector<float> time_cuda_graph(const std::function<void(cudaStream_t)> & fn, int n_warmup, int n_repeat);

}  // namespace tca
