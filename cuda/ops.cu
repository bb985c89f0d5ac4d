// Row-wise and element-wise kernels, and the device query shared by the backend.
#include <algorithm>

#include "common.cuh"
#include "ops.cuh"
#include "rope.cuh"

namespace tca {

namespace {

// Row kernels: one CTA per row, whole-row float4 passes (rows of n_cols % 4 == 0; scalar otherwise).
// Their threads cover a row of 4096 in one float4 each, so a row costs one memory round trip per pass.
// Rows start 16-byte aligned: every caller passes cudaMalloc'd buffers offset by whole rows.

__device__ __forceinline__ float f4_dot(float4 a) {
    return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
}
__device__ __forceinline__ float4 f4_scale(float4 a, float s, float4 g) {
    return make_float4(a.x * s * g.x, a.y * s * g.y, a.z * s * g.z, a.w * s * g.w);
}

// out = x / sqrt(mean(x^2) + eps) * g. out may alias x: each thread reads back only the elements it
// writes itself.
__global__ void rms_norm_kernel(const float * x, const float * g, float eps, int64_t n_cols, float * out) {
    pdl_trigger();
    pdl_wait();
    const float * xr = x + int64_t(blockIdx.x) * n_cols;
    float * outr     = out + int64_t(blockIdx.x) * n_cols;
    float ss         = 0.0f;
    if (n_cols % 4 == 0) {
        const auto * x4 = reinterpret_cast<const float4 *>(xr);
        const int64_t n = n_cols / 4;
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
            ss += f4_dot(x4[c]);
        }
        const float s = rsqrtf(block_sum(ss) / float(n_cols) + eps);
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
            reinterpret_cast<float4 *>(outr)[c] = f4_scale(x4[c], s, reinterpret_cast<const float4 *>(g)[c]);
        }
        return;
    }
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
        ss += xr[c] * xr[c];
    }
    const float s = rsqrtf(block_sum(ss) / float(n_cols) + eps);
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
        outr[c] = xr[c] * s * g[c];
    }
}

// norm_prepare_cuda: xn = x * g and the row's sum of squares.
__global__ void norm_prepare_kernel(const float * x, const float * g, int64_t n_cols, float * xn,
                                    float * part) {
    pdl_trigger();
    pdl_wait();
    const float * xr = x + int64_t(blockIdx.x) * n_cols;
    float * xnr      = xn + int64_t(blockIdx.x) * n_cols;
    float ss         = 0.0f;
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) {
        const float v = xr[c];
        ss += v * v;
        xnr[c] = v * g[c];
    }
    ss = block_sum(ss);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = ss;
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

// rope_store_cuda: one thread per q pair, per k pair slot (slot j < n_rot/2 rotates pair j, a later slot
// copies two unrotated dims) and per v value.
__global__ void rope_store_kernel(float * q, int n_head_q, float * k, const float * v, int64_t n,
                                  int n_head_kv, int h0, int n_heads, rope_params r, kv_store_dst dst) {
    pdl_trigger();
    pdl_wait();
    const int half    = r.n_rot / 2;
    const int slots   = r.head_dim / 2;
    const int64_t n_q = n * n_head_q * half;
    const int64_t n_k = n * n_heads * slots;
    const int64_t n_v = n * n_heads * r.head_dim;
    const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx < n_q) {
        const int64_t th = idx / half;  // token * n_head_q + head
        rope_pair(r, th / n_head_q, int(idx % half), q + th * r.head_dim);
    } else if (idx < n_q + n_k) {
        const int64_t i = idx - n_q;
        const int j     = int(i % slots);
        const int h     = int(i / slots % n_heads);
        const int64_t t = i / (int64_t(slots) * n_heads);
        float * kr      = k + (t * n_head_kv + h0 + h) * r.head_dim;
        __half * kd     = dst.k[h] + t * r.head_dim;
        int i0          = r.n_rot + 2 * (j - half);
        int i1          = i0 + 1;
        if (j < half) {
            rope_pair(r, t, j, kr);
            rope_dims(r, j, i0, i1);
        }
        kd[i0] = __float2half_rn(kr[i0]);
        kd[i1] = __float2half_rn(kr[i1]);
    } else if (idx < n_q + n_k + n_v) {
        const int64_t i              = idx - n_q - n_k;
        const int d                  = int(i % r.head_dim);
        const int h                  = int(i / r.head_dim % n_heads);
        const int64_t t              = i / (int64_t(r.head_dim) * n_heads);
        dst.v[h][t * r.head_dim + d] = __float2half_rn(v[(t * n_head_kv + h0 + h) * r.head_dim + d]);
    }
}

constexpr int kBlock = 256;

unsigned grid_for(int64_t n) {
    return unsigned(ceil_div(n, kBlock));
}

}  // namespace

namespace {

// Reads a device attribute once per process and device.
int device_attribute(cudaDeviceAttr attr, int (&cache)[64]) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    if (dev >= 64) {
        fail("CUDA device %d beyond the 64 supported", dev);
    }
    if (cache[dev] == 0) {
        CUDA_CHECK(cudaDeviceGetAttribute(&cache[dev], attr, dev));
    }
    return cache[dev];
}

}  // namespace

bool cuda_pdl_supported() {
    static int major[64] = {};
    return device_attribute(cudaDevAttrComputeCapabilityMajor, major) >= 9;
}

int cuda_sm_count() {
    static int counts[64] = {};
    return device_attribute(cudaDevAttrMultiProcessorCount, counts);
}

void rms_norm_cuda(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                   cudaStream_t stream) {
    if (n_rows <= 0 || n_cols <= 0) {
        return;
    }
    launch_pdl(rms_norm_kernel, unsigned(n_rows), row_threads(n_cols), 0, stream, x, g, eps, n_cols, out);
    CUDA_CHECK_LAUNCH("rms_norm_kernel");
}

void norm_prepare_cuda(const float * x, const float * g, int64_t n_rows, int64_t n_cols, float * xn,
                       float * part, cudaStream_t stream) {
    if (n_rows <= 0 || n_cols <= 0) {
        return;
    }
    launch_pdl(norm_prepare_kernel, unsigned(n_rows), row_threads(n_cols), 0, stream, x, g, n_cols, xn, part);
    CUDA_CHECK_LAUNCH("norm_prepare_kernel");
}

void add_bias_cuda(float * y, const float * b, int64_t n_rows, int64_t n_cols, cudaStream_t stream) {
    if (n_rows * n_cols <= 0) {
        return;
    }
    add_bias_kernel<<<grid_for(n_rows * n_cols), kBlock, 0, stream>>>(y, b, n_rows, n_cols);
    CUDA_CHECK_LAUNCH("add_bias_kernel");
}

void swiglu_cuda(float * gate, const float * up, int64_t n, cudaStream_t stream) {
    if (n <= 0) {
        return;
    }
    swiglu_kernel<<<grid_for(n), kBlock, 0, stream>>>(gate, up, n);
    CUDA_CHECK_LAUNCH("swiglu_kernel");
}

void rope_store_cuda(float * q, int n_head_q, float * k, const float * v, int64_t n, int n_head_kv, int h0,
                     int n_heads, const rope_params & r, const kv_store_dst & dst, cudaStream_t stream) {
    if (r.n_rot <= 0 || r.n_rot % 2 != 0 || r.n_rot > r.head_dim || r.head_dim % 2 != 0) {
        fail("rope_store_cuda: n_rot %d must be even and within the even head_dim %d", r.n_rot, r.head_dim);
    }
    if (n_heads < 0 || n_heads > kRopeStoreHeads || h0 < 0 || h0 + n_heads > n_head_kv) {
        fail("rope_store_cuda: heads [%d, %d) outside [0, %d) or more than %d", h0, h0 + n_heads, n_head_kv,
             kRopeStoreHeads);
    }
    const int64_t n_threads =
        n * (int64_t(n_head_q) * (r.n_rot / 2) + int64_t(n_heads) * (r.head_dim / 2 + r.head_dim));
    if (n_threads <= 0) {
        return;
    }
    launch_pdl(rope_store_kernel, grid_for(n_threads), kBlock, 0, stream, q, n_head_q, k, v, n, n_head_kv, h0,
               n_heads, r, dst);
    CUDA_CHECK_LAUNCH("rope_store_kernel");
}

}  // namespace tca
