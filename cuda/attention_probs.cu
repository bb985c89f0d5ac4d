// TCA scores on the GPU: the group mean of the softmax probabilities of a few query rows over a range of
// one KV head's cache entries (engine/attention.h attention_group_probs). Three passes over a workspace of
// scores [n_group, n]: scores, per-row log-sum-exp, then the averaged probabilities of the output range.
#include "attention.cuh"
#include "common.cuh"

namespace tca {

namespace {

constexpr int kMaxGroup = 32;  // query rows held in shared memory

// s[g, t] = scale * q[g] . k[norm_begin + t]; one thread per key, q in shared memory.
template <int D>
__global__ void probs_scores_kernel(const float * q, int n_group, float scale, const __half * k,
                                    int64_t norm_begin, int64_t n, float * s) {
    __shared__ float s_q[kMaxGroup * D];
    for (int c = threadIdx.x; c < n_group * D; c += blockDim.x) {
        s_q[c] = q[c] * scale;
    }
    __syncthreads();
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= n) {
        return;
    }
    float acc[kMaxGroup] = {};
    const uint4 * row    = reinterpret_cast<const uint4 *>(k + (norm_begin + t) * D);
    for (int c = 0; c < D / 8; ++c) {
        const uint4 raw    = row[c];
        const __half2 * h2 = reinterpret_cast<const __half2 *>(&raw);
        float kv[8];
        for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(h2[e]);
            kv[2 * e]      = f.x;
            kv[2 * e + 1]  = f.y;
        }
#pragma unroll
        for (int gi = 0; gi < kMaxGroup; ++gi) {
            if (gi < n_group) {
                float a = acc[gi];
                for (int e = 0; e < 8; ++e) {
                    a += s_q[gi * D + 8 * c + e] * kv[e];
                }
                acc[gi] = a;
            }
        }
    }
#pragma unroll
    for (int gi = 0; gi < kMaxGroup; ++gi) {
        if (gi < n_group) {
            s[gi * n + t] = acc[gi];
        }
    }
}

__device__ float block_reduce(float v, bool is_max, float * s_red) {
    for (int o = 16; o > 0; o /= 2) {
        const float w = __shfl_xor_sync(0xffffffff, v, o);
        v             = is_max ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x % 32 == 0) {
        s_red[threadIdx.x / 32] = v;
    }
    __syncthreads();
    v = is_max ? -INFINITY : 0.0f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) {
        v = is_max ? fmaxf(v, s_red[w]) : v + s_red[w];
    }
    __syncthreads();
    return v;
}

// lse[g] = log(sum_t exp(s[g, t])); one CTA per row.
__global__ void probs_lse_kernel(const float * s, int64_t n, float * lse) {
    __shared__ float s_red[32];
    const float * row = s + int64_t(blockIdx.x) * n;
    float mx          = -INFINITY;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
        mx = fmaxf(mx, row[t]);
    }
    mx        = block_reduce(mx, true, s_red);
    float sum = 0.0f;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
        sum += __expf(row[t] - mx);
    }
    sum = block_reduce(sum, false, s_red);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = mx + logf(sum);
    }
}

// out[t - out_begin] = mean_g exp(s[g, t - norm_begin] - lse[g]).
__global__ void probs_out_kernel(const float * s, const float * lse, int n_group, int64_t n,
                                 int64_t norm_begin, int64_t out_begin, int64_t n_out, float * out) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= n_out) {
        return;
    }
    const int64_t c = out_begin + t - norm_begin;
    float acc       = 0.0f;
    for (int gi = 0; gi < n_group; ++gi) {
        acc += __expf(s[gi * n + c] - lse[gi]);
    }
    out[t] = acc / float(n_group);
}

}  // namespace

size_t attention_group_probs_work_bytes(int n_group, int64_t norm_begin, int64_t norm_end) {
    return size_t(n_group) * size_t(norm_end - norm_begin + 1) * sizeof(float);
}

void attention_group_probs_cuda(const float * q, int n_group, int head_dim, float scale, const __half * k,
                                int64_t norm_begin, int64_t norm_end, int64_t out_begin, int64_t out_end,
                                float * out, float * work, cudaStream_t stream) {
    if (head_dim != 64 && head_dim != 128) {
        fail("attention_group_probs_cuda: head_dim %d is not supported (64 or 128)", head_dim);
    }
    if (n_group < 1 || n_group > kMaxGroup) {
        fail("attention_group_probs_cuda: n_group %d is outside [1, %d]", n_group, kMaxGroup);
    }
    if (norm_begin < 0 || norm_end <= norm_begin || out_begin < norm_begin || out_end > norm_end ||
        out_end < out_begin) {
        fail("attention_group_probs_cuda: ranges norm [%lld, %lld) out [%lld, %lld) are inconsistent",
             (long long)norm_begin, (long long)norm_end, (long long)out_begin, (long long)out_end);
    }
    const int64_t n = norm_end - norm_begin;
    float * s       = work;
    float * lse     = work + int64_t(n_group) * n;
    const int block = 128;
    const auto grid = unsigned(ceil_div(n, block));
    if (head_dim == 64) {
        probs_scores_kernel<64><<<grid, block, 0, stream>>>(q, n_group, scale, k, norm_begin, n, s);
    } else {
        probs_scores_kernel<128><<<grid, block, 0, stream>>>(q, n_group, scale, k, norm_begin, n, s);
    }
    CUDA_CHECK_LAUNCH("probs_scores_kernel");
    probs_lse_kernel<<<unsigned(n_group), 512, 0, stream>>>(s, n, lse);
    CUDA_CHECK_LAUNCH("probs_lse_kernel");
    const int64_t n_out = out_end - out_begin;
    if (n_out > 0) {
        probs_out_kernel<<<unsigned(ceil_div(n_out, 256)), 256, 0, stream>>>(s, lse, n_group, n, norm_begin,
                                                                             out_begin, n_out, out);
        CUDA_CHECK_LAUNCH("probs_out_kernel");
    }
}

}  // namespace tca
