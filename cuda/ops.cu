// Row-wise and element-wise kernels, and the device query shared by the backend.
#include <algorithm>

#include "common.cuh"
#include "ops.cuh"
#include "rope.cuh"

namespace tca {

namespace {

// Row kernels: one CTA per row, whole-row float4 passes (rows of n_cols % 4 == 0; scalar otherwise).
// Their threads cover a row of 4096 in one float4 each, so a row costs one memory round trip per pass.
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

__device__ __forceinline__ float4 f4_add(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float f4_dot(float4 a) {
    return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
}
__device__ __forceinline__ float4 f4_scale(float4 a, float s, float4 g) {
    return make_float4(a.x * s * g.x, a.y * s * g.y, a.z * s * g.z, a.w * s * g.w);
}

// x += y when ADD (y may be null otherwise), then out = x / sqrt(mean(x^2) + eps) * g. out may alias x, or
// y: each thread reads back only the elements it wrote itself, and y is read before out is written.
template <bool ADD>
__global__ void rms_norm_kernel(float * x, const float * y, const float * g, float eps, int64_t n_cols,
                                float * out) {
    float * xr       = x + int64_t(blockIdx.x) * n_cols;
    const float * yr = ADD ? y + int64_t(blockIdx.x) * n_cols : nullptr;
    float * outr     = out + int64_t(blockIdx.x) * n_cols;
    float ss         = 0.0f;
    if (n_cols % 4 == 0) {
        auto * x4       = reinterpret_cast<float4 *>(xr);
        const int64_t n = n_cols / 4;
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
            float4 v = x4[c];
            if (ADD) {
                v     = f4_add(v, reinterpret_cast<const float4 *>(yr)[c]);
                x4[c] = v;
            }
            ss += f4_dot(v);
        }
        const float s = rsqrtf(block_sum(ss) / float(n_cols) + eps);
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
            reinterpret_cast<float4 *>(outr)[c] = f4_scale(x4[c], s, reinterpret_cast<const float4 *>(g)[c]);
        }
        return;
    }
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
        float v = xr[c];
        if (ADD) {
            v += yr[c];
            xr[c] = v;
        }
        ss += v * v;
    }
    const float s = rsqrtf(block_sum(ss) / float(n_cols) + eps);
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
        outr[c] = xr[c] * s * g[c];
    }
}

// Threads of a row kernel: one float4 of the row each, in whole warps, 32 to 1024.
unsigned row_threads(int64_t n_cols) {
    return unsigned(32 * std::clamp<int64_t>(ceil_div(ceil_div(n_cols, 4), 32), 1, 32));
}

__global__ void add_bias_kernel(float * y, const float * b, int64_t n_rows, int64_t n_cols) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n_rows * n_cols) {
        y[i] += b[i % n_cols];
    }
}

__global__ void swiglu_kernel(float * gate, const float * up, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        gate[i]       = g / (1.0f + expf(-g)) * up[i];
    }
}

// One thread per (token, head, pair) of q [n_tok, n_head_q] and then of k [n_tok, n_head_k].
__global__ void rope_kernel(float * q, int n_head_q, float * k, int n_head_k, int64_t n_tok, rope_params r) {
    const int half    = r.n_rot / 2;
    const int64_t n_q = n_tok * n_head_q * half;
    int64_t idx       = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    float * x         = q;
    int n_head        = n_head_q;
    if (idx >= n_q) {
        idx -= n_q;
        x      = k;
        n_head = n_head_k;
        if (idx >= n_tok * n_head_k * half) {
            return;
        }
    }
    const int64_t th = idx / half;  // token * n_head + head
    rope_pair(r, th / n_head, int(idx % half), x + th * r.head_dim);
}

constexpr int kBlock = 256;

unsigned grid_for(int64_t n) {
    return unsigned(ceil_div(n, kBlock));
}

}  // namespace

int cuda_sm_count() {
    constexpr int n_max      = 64;
    static int counts[n_max] = {};
    int dev                  = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= n_max) {
        fail("cuda_sm_count: device %d beyond the %d supported", dev, n_max);
    }
    if (counts[dev] == 0) {
        CUDA_CHECK(cudaDeviceGetAttribute(&counts[dev], cudaDevAttrMultiProcessorCount, dev));
    }
    return counts[dev];
}

void rms_norm_cuda(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                   cudaStream_t stream) {
    if (n_rows <= 0 || n_cols <= 0) {
        return;
    }
    // x is only read (ADD = false): the cast lets both variants share one signature.
    rms_norm_kernel<false><<<unsigned(n_rows), row_threads(n_cols), 0, stream>>>(
        const_cast<float *>(x), nullptr, g, eps, n_cols, out);
    CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void add_bias_cuda(float * y, const float * b, int64_t n_rows, int64_t n_cols, cudaStream_t stream) {
    if (n_rows * n_cols <= 0) {
        return;
    }
    add_bias_kernel<<<grid_for(n_rows * n_cols), kBlock, 0, stream>>>(y, b, n_rows, n_cols);
    CUDA_CHECK_LAUNCH("add_bias_kernel");
}

void add_rms_norm_cuda(float * x, const float * y, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                       float * out, cudaStream_t stream) {
    if (n_rows <= 0 || n_cols <= 0) {
        return;
    }
    rms_norm_kernel<true><<<unsigned(n_rows), row_threads(n_cols), 0, stream>>>(x, y, g, eps, n_cols, out);
    CUDA_CHECK_LAUNCH("add_rms_norm_kernel");
}

void swiglu_cuda(float * gate, const float * up, int64_t n, cudaStream_t stream) {
    if (n <= 0) {
        return;
    }
    swiglu_kernel<<<grid_for(n), kBlock, 0, stream>>>(gate, up, n);
    CUDA_CHECK_LAUNCH("swiglu_kernel");
}

void rope_cuda(float * q, int n_head_q, float * k, int n_head_k, int64_t n_tok, int head_dim, int n_rot,
               const int32_t * pos, float base, float scale, const float * freq_factors, bool adjacent,
               cudaStream_t stream) {
    if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > head_dim) {
        fail("rope_cuda: n_rot %d must be even and within head_dim %d", n_rot, head_dim);
    }
    const int64_t n = n_tok * (n_head_q + n_head_k) * (n_rot / 2);
    if (n <= 0) {
        return;
    }
    const rope_params r{head_dim, n_rot, base, scale, freq_factors, pos, adjacent};
    rope_kernel<<<grid_for(n), kBlock, 0, stream>>>(q, n_head_q, k, n_head_k, n_tok, r);
    CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace tca
