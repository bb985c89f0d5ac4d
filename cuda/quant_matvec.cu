// Kernels over ggml blocks. matvec: one CTA per matvec_rows<T> output rows; each thread takes whole units
// (16 to 64 contiguous bytes of a row) and reads the matching x chunk once for all the rows. Q8_0, Q4_K and
// Q6_K multiply with int8 activations (dp4a); the others in fp32. One launch serves several products of the
// same input (Q, K and V: up to kMatvecSegs weights of one type, one after the other in the grid), or the
// gate and up products of a SwiGLU feed-forward, whose CTAs read 4 rows of each and store silu(g) * u.
// RMS norms run deferred (matvec_in): the residual product that computes r writes r * g and a partial sum
// of squares per CTA, and the products reading it scale their sums (or their int8 activations) by the norm.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "quant_blocks.cuh"
#include "quant_matvec.cuh"
#include "rope.cuh"

namespace tca {

namespace {

// A CTA of up to kMatvecWarps warps computes matvec_rows<T> rows: its threads split each row's units, every
// x chunk read from cache serves all the CTA's rows, and the partial sums are reduced across the CTA. The
// warp count is chosen per row length (matvec_threads) so that every thread takes the same number of units.
constexpr int kMatvecWarps = 8;

// Rows per CTA: F16 rows stream best 8 to a CTA (fewer CTAs than the device holds at once for 4096 rows:
// no partial second wave), the integer paths 4 (8 cost them 10-25%).
constexpr int matvec_rows_of(ggml_type type) {
    return type == ggml_type::F16 ? 8 : 4;
}
template <ggml_type T>
constexpr int matvec_rows = matvec_rows_of(T);

// Most warps of a CTA. F16 CTAs take 2 (each thread then walks several units of its rows), so that more of
// them fit at once. F16 generation on the H100 (tg128, same-run pairs): 8 warps 158 t/s; 2 for plain
// matvecs and 8 for gate/up 161-164; 2 and 4: 161-163; 2 and 2: 164.5 against 161.4 for 2 and 4. The
// integer paths lost 1-2% with 2 and keep 8.
constexpr int matvec_max_warps(ggml_type type) {
    return type == ggml_type::F16 ? 2 : kMatvecWarps;
}

// Sums acc [R] over the CTA; the totals are in the returned shared array (valid after the call).
template <int R>
__device__ __forceinline__ const float * matvec_reduce(float (&acc)[R]) {
    __shared__ float s_acc[kMatvecWarps][R];
    __shared__ float s_sum[R];
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
        for (int o = 16; o > 0; o /= 2) {
            acc[rr] += __shfl_xor_sync(0xffffffff, acc[rr], o);
        }
        if (lane == 0) {
            s_acc[warp][rr] = acc[rr];
        }
    }
    __syncthreads();
    if (threadIdx.x < R) {
        float sum = 0.0f;
        for (int w = 0; w < int(blockDim.x / 32); ++w) {
            sum += s_acc[w][threadIdx.x];
        }
        s_sum[threadIdx.x] = sum;
    }
    __syncthreads();
    return s_sum;
}

// acc[r] += row r . x over the CTA's share of the units, fp32 path; rows [R] point at whole weight rows.
// acc[R] is the caller's (matvec_dot).
template <ggml_type T, int R>
__device__ __forceinline__ void matvec_accumulate(const uint8_t * const (&rows)[R], int64_t n_in,
                                                  const float * x, float (&acc)[R + 1]) {
    using Q               = qtraits<T>;
    const int64_t n_units = n_in / Q::unit;
    for (int64_t u = threadIdx.x; u < n_units; u += blockDim.x) {
        float xv[Q::unit];
        const float4 * xp = reinterpret_cast<const float4 *>(x + u * Q::unit);
#pragma unroll
        for (int c = 0; c < Q::unit / 4; ++c) {
            const float4 xx = __ldg(xp + c);
            xv[4 * c]       = xx.x;
            xv[4 * c + 1]   = xx.y;
            xv[4 * c + 2]   = xx.z;
            xv[4 * c + 3]   = xx.w;
        }
        if constexpr (T == ggml_type::F16) {
            // Every row's 64 bytes are loaded before any is used: R * 64 bytes in flight per thread. Left
            // to itself, ptxas batched these loads or not depending on unrelated code (90 against 134
            // registers; F16 tg128 155.5 against 164.6 t/s after one such change).
            uint4 raw[R][4];
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    raw[rr][c] = reinterpret_cast<const uint4 *>(rows[rr] + u * 64)[c];
                }
            }
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const __half2 * h = reinterpret_cast<const __half2 *>(&raw[rr][c]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float2 f = __half22float2(h[e]);
                        acc[rr] += f.x * xv[8 * c + 2 * e];
                        acc[rr] += f.y * xv[8 * c + 2 * e + 1];
                    }
                }
            }
        } else {
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
                float v[Q::unit];
                dequant_unit<T>(rows[rr], u, v);
#pragma unroll
                for (int e = 0; e < Q::unit; ++e) {
                    acc[rr] += v[e] * xv[e];
                }
            }
        }
    }
}

// Activations for the integer path: x quantized per 32 elements to int8, qx [n_in], with ds [n_in / 32]
// = (scale, sum of x) so that sum_e x_e w_e ~ scale * sum_e qx_e w_e. One warp per 32-element block. With
// part set (matvec_in's deferred norm), x * rsqrt(sum(part) / n_in + eps) is quantized instead: every CTA
// first sums the n_part partial sums.
__global__ void quantize_x_q8_kernel(const float * x, const float * part, int n_part, float eps, int64_t n_in,
                                     int8_t * qx, float2 * ds) {
    pdl_trigger();
    pdl_wait();
    float norm = 1.0f;
    if (part != nullptr) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < n_part; i += blockDim.x) {
            ss += part[i];
        }
        norm = rsqrtf(block_sum(ss) / float(n_in) + eps);
    }
    const int64_t b = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane  = threadIdx.x % 32;
    if (b >= n_in / 32) {
        return;
    }
    const float v = x[b * 32 + lane] * norm;
    float amax    = fabsf(v);
    float sum     = v;
    for (int o = 16; o > 0; o /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
        sum += __shfl_xor_sync(0xffffffff, sum, o);
    }
    const float d     = amax / 127.0f;
    qx[b * 32 + lane] = int8_t(d > 0.0f ? __float2int_rn(v / d) : 0);
    if (lane == 0) {
        ds[b] = make_float2(d, sum);
    }
}

// Types multiplied against int8 activations with dp4a (as ggml's own CPU and CUDA paths do).
template <ggml_type T>
constexpr bool kUsesQ8 = T == ggml_type::Q8_0 || T == ggml_type::Q4_K || T == ggml_type::Q6_K;

// Four consecutive bytes at a 2-byte aligned address (Q8_0 and Q6_K blocks have even sizes).
__device__ __forceinline__ int load_u16x2(const uint8_t * p) {
    const uint16_t * h = reinterpret_cast<const uint16_t *>(p);
    return int(uint32_t(h[0]) | (uint32_t(h[1]) << 16));
}

// Dot product of unit u of a row with its int8 activations xq [unit / 4 words] and the (scale, sum)
// pairs ds of the unit's 32-element blocks.
template <ggml_type T>
__device__ float dot_q8(const uint8_t * row, int64_t u, const int * xq, const float2 * ds);

template <>
__device__ __forceinline__ float dot_q8<ggml_type::Q8_0>(const uint8_t * row, int64_t u, const int * xq,
                                                         const float2 * ds) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row) + u;
    int s                = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        s = __dp4a(load_u16x2(reinterpret_cast<const uint8_t *>(b->qs) + 4 * k), xq[k], s);
    }
    return __half2float(b->d) * ds[0].x * float(s);
}

// Unit u of Q4_K: sub-blocks 2p, 2p + 1 of super-block u / 4 (p = u % 4), in the low and high nibbles of
// the same 32 bytes. Per sub-block: d * sc * scale_x * sum(q * qx) - dmin * mn * sum(x).
template <>
__device__ __forceinline__ float dot_q8<ggml_type::Q4_K>(const uint8_t * row, int64_t u, const int * xq,
                                                         const float2 * ds) {
    const block_q4_k * b = reinterpret_cast<const block_q4_k *>(row) + u / 4;
    const int p          = int(u % 4);
    const uint4 * src    = reinterpret_cast<const uint4 *>(b->qs + 32 * p);
    const uint4 q0       = src[0];
    const uint4 q1       = src[1];
    const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    int s0               = 0;
    int s1               = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        s0 = __dp4a(int(qw[k] & 0x0F0F0F0Fu), xq[k], s0);
        s1 = __dp4a(int((qw[k] >> 4) & 0x0F0F0F0Fu), xq[8 + k], s1);
    }
    float sc0, mn0, sc1, mn1;
    q4k_scale_min(2 * p, b->scales, sc0, mn0);
    q4k_scale_min(2 * p + 1, b->scales, sc1, mn1);
    return __half2float(b->d) * (sc0 * ds[0].x * float(s0) + sc1 * ds[1].x * float(s1)) -
           __half2float(b->dmin) * (mn0 * ds[0].y + mn1 * ds[1].y);
}

// Unit u of Q6_K: group k = u % 4 of half h = (u % 8) / 4 of super-block u / 8, two scales of 16 values.
// q = 6-bit value - 32, so sum((q6 - 32) * qx) = sum(q6 * qx) - 32 * sum(qx).
template <>
__device__ __forceinline__ float dot_q8<ggml_type::Q6_K>(const uint8_t * row, int64_t u, const int * xq,
                                                         const float2 * ds) {
    const block_q6_k * b = reinterpret_cast<const block_q6_k *>(row) + u / 8;
    const int h          = int(u % 8) / 4;
    const int k          = int(u % 4);
    const uint8_t * ql   = b->ql + 64 * h + 32 * (k & 1);
    const uint8_t * qh   = b->qh + 32 * h;
    const int shl        = k >= 2 ? 4 : 0;
    float sum            = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        int s  = 0;
        int sx = 0;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int o       = 16 * half + 4 * c;
            const uint32_t lo = (uint32_t(load_u16x2(ql + o)) >> shl) & 0x0F0F0F0Fu;
            const uint32_t hi = ((uint32_t(load_u16x2(qh + o)) >> (2 * k)) & 0x03030303u) << 4;
            s                 = __dp4a(int(lo | hi), xq[4 * half + c], s);
            sx                = __dp4a(0x01010101, xq[4 * half + c], sx);
        }
        sum += float(b->scales[8 * h + 2 * k + half]) * float(s - 32 * sx);
    }
    return __half2float(b->d) * ds[0].x * sum;
}

// acc[r] += row r . x over the CTA's share of the units, integer path: x as int8 qx [n_in] with the
// (scale, sum) pairs ds [n_in / 32].
template <ggml_type T, int R>
__device__ __forceinline__ void matvec_q8_accumulate(const uint8_t * const (&rows)[R], int64_t n_in,
                                                     const int8_t * qx, const float2 * ds,
                                                     float (&acc)[R + 1]) {
    constexpr int unit    = qtraits<T>::unit;
    const int64_t n_units = n_in / unit;
    for (int64_t u = threadIdx.x; u < n_units; u += blockDim.x) {
        int xq[unit / 4];
        const int4 * xp = reinterpret_cast<const int4 *>(qx + u * unit);
#pragma unroll
        for (int c = 0; c < unit / 16; ++c) {
            const int4 v  = __ldg(xp + c);
            xq[4 * c]     = v.x;
            xq[4 * c + 1] = v.y;
            xq[4 * c + 2] = v.z;
            xq[4 * c + 3] = v.w;
        }
        float2 dsu[unit / 32];
#pragma unroll
        for (int c = 0; c < unit / 32; ++c) {
            dsu[c] = __ldg(ds + u * (unit / 32) + c);
        }
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
            acc[rr] += dot_q8<T>(rows[rr], u, xq, dsu);
        }
    }
}

// The input of a matvec (matvec_in): x in fp32 with the deferred norm's partial sums (part null: none),
// and for the integer path its int8 form (matvec_input), normalised already.
struct matvec_x {
    const float * x;
    const float * part;
    int n_part;
    float eps;
    const int8_t * qx;
    const float2 * ds;
};

// The CTA's totals of row r . x for its rows [R]: returned in shared memory (valid after the call), with
// scale set to what they must be multiplied by: for the fp32 path with a deferred norm 1 / sqrt(sum(part)
// / n_in + eps), whose partial sums ride in the CTA's reduction; else 1 (the integer path's qx is
// normalised already). The partial sums are read after the rows: read before them (registers held through
// the loop) or copied ahead with cp.async, F16 tg128 measured 160-161 t/s against 165-166.
template <ggml_type T, int R>
__device__ __forceinline__ const float * matvec_dot(const uint8_t * const (&rows)[R], int64_t n_in,
                                                    const matvec_x & in, float & scale) {
    constexpr bool kFp32 = !kUsesQ8<T>;
    float acc[R + 1]     = {};  // acc[R]: the norm's partial sums
    if constexpr (kUsesQ8<T>) {
        matvec_q8_accumulate<T, R>(rows, n_in, in.qx, in.ds, acc);
    } else {
        matvec_accumulate<T, R>(rows, n_in, in.x, acc);
    }
    if (kFp32 && in.part != nullptr) {
        for (int i = threadIdx.x; i < in.n_part; i += blockDim.x) {
            acc[R] += in.part[i];
        }
    }
    const float * sum = matvec_reduce<R + 1>(acc);
    scale             = kFp32 && in.part != nullptr ? rsqrtf(sum[R] / float(n_in) + in.eps) : 1.0f;
    return sum;
}

// Up to kMatvecSegs products of one input, each weight's CTAs after the previous one's.
struct matvec_seg {
    const uint8_t * w;
    const float * bias;  // [n_out] or null
    float * y;           // [n_out]
    int64_t n_out;
    int cta_end;  // CTAs of this and the earlier segments
    bool add;     // y += the product
    // The output prepared as a deferred-norm input (matvec_out): xn = y * norm_g, part [CTAs] (null: not).
    const float * norm_g;
    float * xn;
    float * part;
};
struct matvec_segs {
    matvec_seg s[kMatvecSegs];
    int n;
};

// The epilogue of the Q/K/V launch of one token (matvec_qkv_rope_cuda): segment j of the launch is q
// (role0 + j == 0), k (1) or v (2).
struct matvec_rope {
    rope_params r;
    kv_store_dst dst;
    int role0;
};

// Row `row` (value v, its pair's value pv) of a Q/K/V segment: RoPE for q and k (adjacent pairs: a CTA's
// rows start at a multiple of 4, so its pairs are whole), the fp16 store for k and v.
__device__ __forceinline__ float rope_epilogue(const matvec_rope & e, int role, int64_t row, float v,
                                               float pv) {
    const int hd = e.r.head_dim;
    const int d  = int(row % hd);
    if (role < 2 && d < e.r.n_rot) {
        float c;
        float s;
        rope_cos_sin(e.r, 0, d / 2, c, s);
        v = d % 2 == 0 ? v * c - pv * s : pv * s + v * c;
    }
    if (role > 0) {
        __half * dst = role == 1 ? e.dst.k[row / hd] : e.dst.v[row / hd];
        dst[d]       = __float2half_rn(v);
    }
    return v;
}

// Launches of at most this many weight bytes stream them in less time than a round trip to DRAM and a
// kernel's start (~1.3 us at 3 TB/s): their CTAs trigger their successor at once and ask L2 for their rows
// before they wait, so that the next small launch's weights are on their way while this one runs.
// SmolLM2-135M shapes on the H100 (tg128, two interleaved pairs): Q4_1 1,048-1,080 -> 1,185-1,199 t/s, F16
// 978-988 -> 1,102-1,121; the trigger without the request lost 3%. Larger launches are bound by bandwidth,
// where both lost (cuda/NOTES.md items 12 and 18); the 8B shapes have none this small.
constexpr size_t kSmallLaunchBytes = size_t(4) << 20;

// The start of a small launch: lets the next kernel's CTAs start and asks L2 for this CTA's rows [R] of
// row_bytes each (whole 128-byte lines).
template <int R>
__device__ __forceinline__ void small_launch_start(const uint8_t * const (&rows)[R], size_t row_bytes) {
    pdl_trigger();
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
        const uintptr_t first = reinterpret_cast<uintptr_t>(rows[rr]) / 128;
        const uintptr_t last  = (reinterpret_cast<uintptr_t>(rows[rr]) + row_bytes - 1) / 128;
        for (uintptr_t line = first + threadIdx.x; line <= last; line += blockDim.x) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(line * 128));
        }
    }
}

// SMALL: a small launch (kSmallLaunchBytes). A template parameter rather than a run-time flag: the other
// instances then compile exactly as without it (a flag changed ptxas's F16 SwiGLU from 118 to 92 registers,
// and F16 tg128 on the 8B shape from 169.0 to 160.3 t/s, one run each).
template <ggml_type T, bool ROPE, bool SMALL>
__global__ void __launch_bounds__(32 * kMatvecWarps)
    matvec_kernel(const matvec_segs segs, size_t row_bytes, int64_t n_in, const matvec_x in,
                  const matvec_rope rope) {
    // This CTA's segment, chosen with constant indices only (indexing the parameter by a variable would
    // copy it to local memory).
    matvec_seg sg = segs.s[0];
    int cta0      = 0;
    int seg       = 0;
#pragma unroll
    for (int j = 1; j < kMatvecSegs; ++j) {
        if (j < segs.n && int(blockIdx.x) >= segs.s[j - 1].cta_end) {
            sg   = segs.s[j];
            cta0 = segs.s[j - 1].cta_end;
            seg  = j;
        }
    }
    constexpr int R    = matvec_rows<T>;
    const int64_t row0 = int64_t(int(blockIdx.x) - cta0) * R;
    const uint8_t * rows[R];
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
        // Rows past the end re-read the last row (branch-free); their sums are dropped below.
        rows[rr] = sg.w + min(row0 + rr, sg.n_out - 1) * row_bytes;
    }
    if constexpr (SMALL) {
        small_launch_start<R>(rows, row_bytes);
    }
    pdl_wait();  // x comes from the previous kernel
    float scale;
    const float * sum = matvec_dot<T, R>(rows, n_in, in, scale);
    static_assert(R <= 32 && (R & (R - 1)) == 0, "the first warp holds the rows, a power of two");
    if (threadIdx.x >= 32) {
        return;  // the first warp stores the CTA's rows
    }
    const int64_t row = row0 + threadIdx.x;
    float v           = 0.0f;
    if (threadIdx.x < R && row < sg.n_out) {
        // Explicit fmas: every instance rounds the same way.
        v = __fmaf_rn(sum[threadIdx.x], scale, sg.bias != nullptr ? sg.bias[row] : 0.0f);
        if constexpr (ROPE) {
            const float pv =
                __fmaf_rn(sum[threadIdx.x ^ 1], scale, sg.bias != nullptr ? sg.bias[row ^ 1] : 0.0f);
            v = rope_epilogue(rope, rope.role0 + seg, row, v, pv);
        }
        // The Q/K/V epilogue neither adds nor prepares a norm (matvec_qkv_rope_cuda rejects both).
        if (!ROPE && sg.add) {
            v += sg.y[row];
        }
        sg.y[row] = v;
        if (!ROPE && sg.xn != nullptr) {
            sg.xn[row] = v * sg.norm_g[row];
        }
    }
    if (!ROPE && sg.part != nullptr) {  // the sum of the rows' squares, over lanes [0, R)
        float ss = v * v;
#pragma unroll
        for (int o = R / 2; o > 0; o /= 2) {
            ss += __shfl_xor_sync(0xffffffff, ss, o);
        }
        if (threadIdx.x == 0) {
            sg.part[int(blockIdx.x) - cta0] = ss;
        }
    }
}

// y[o] = silu(gate[o] . x) * (up[o] . x): a CTA reads matvec_rows<T> rows of each weight.
template <ggml_type T, bool SMALL>
__global__ void __launch_bounds__(32 * kMatvecWarps)
    matvec_swiglu_kernel(const uint8_t * gate, const uint8_t * up, size_t row_bytes, int64_t n_in,
                         int64_t n_out, const matvec_x in, float * y) {
    constexpr int RS   = matvec_rows<T>;
    constexpr int R    = 2 * RS;
    const int64_t row0 = int64_t(blockIdx.x) * RS;
    const uint8_t * rows[R];
#pragma unroll
    for (int rr = 0; rr < RS; ++rr) {
        const int64_t row = min(row0 + rr, n_out - 1);
        rows[rr]          = gate + row * row_bytes;
        rows[RS + rr]     = up + row * row_bytes;
    }
    if constexpr (SMALL) {
        small_launch_start<R>(rows, row_bytes);
    }
    pdl_wait();
    float scale;
    const float * sum = matvec_dot<T, R>(rows, n_in, in, scale);
    const int64_t row = row0 + threadIdx.x;
    if (threadIdx.x < RS && row < n_out) {
        const float g = sum[threadIdx.x] * scale;
        y[row]        = g / (1.0f + expf(-g)) * (sum[RS + threadIdx.x] * scale);
    }
}

// One thread per unit of the selected rows; src_row(r) gives the weight row of output row r.
template <ggml_type T, typename Out, typename RowOf>
__global__ void dequant_rows_kernel(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t n_rows,
                                    RowOf row_of, Out * out) {
    using Q               = qtraits<T>;
    const int64_t n_units = n_in / Q::unit;
    const int64_t idx     = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= n_rows * n_units) {
        return;
    }
    const int64_t r = idx / n_units;
    const int64_t u = idx % n_units;
    float v[Q::unit];
    dequant_unit<T>(w + row_of(r) * row_bytes, u, v);
    Out * dst = out + r * n_in + u * Q::unit;
#pragma unroll
    for (int e = 0; e < Q::unit; ++e) {
        dst[e] = Out(v[e]);
    }
}

// dequant_rows_kernel for fp16 output rows [row0, row0 + n_rows): each thread dequantizes one unit into
// shared memory (rows padded by 16 bytes so that a quarter-warp's 16-byte stores hit distinct banks), then
// the CTA writes its contiguous output range with coalesced 16-byte stores (a thread writing its own unit
// directly stores to 32 different lines per warp instruction).
constexpr int kDequantThreads = 256;

template <ggml_type T>
__global__ void __launch_bounds__(kDequantThreads)
    dequant_rows_f16_kernel(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t row0, int64_t n_rows,
                            __half * out) {
    using Q                  = qtraits<T>;
    constexpr int n_chunks   = Q::unit / 8;   // 16-byte chunks per unit
    constexpr int row_chunks = n_chunks + 1;  // padded
    __shared__ uint4 s_out[kDequantThreads * row_chunks];
    const int64_t n_units = n_in / Q::unit;
    const int64_t n_total = n_rows * n_units;
    const int64_t idx0    = int64_t(blockIdx.x) * kDequantThreads;
    const int64_t idx     = idx0 + threadIdx.x;
    if (idx < n_total) {
        float v[Q::unit];
        dequant_unit<T>(w + (row0 + idx / n_units) * row_bytes, idx % n_units, v);
#pragma unroll
        for (int c = 0; c < n_chunks; ++c) {
            uint4 chunk;
            __half2 * h2 = reinterpret_cast<__half2 *>(&chunk);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                h2[e] = __floats2half2_rn(v[8 * c + 2 * e], v[8 * c + 2 * e + 1]);
            }
            s_out[threadIdx.x * row_chunks + c] = chunk;
        }
    }
    __syncthreads();
    // Unit idx fills out[idx * unit, (idx + 1) * unit): the CTA's units are one contiguous range.
    const int64_t n_valid = min(int64_t(kDequantThreads), n_total - idx0) * n_chunks;
    uint4 * dst           = reinterpret_cast<uint4 *>(out + idx0 * Q::unit);
    for (int64_t j = threadIdx.x; j < n_valid; j += kDequantThreads) {
        dst[j] = s_out[(j / n_chunks) * row_chunks + j % n_chunks];
    }
}

struct row_ids {
    const int32_t * ids;
    __device__ int64_t operator()(int64_t r) const { return ids[r]; }
};

// Calls fn.template operator()<T>() for the kernel instance of w's type; fails for other types.
template <typename Fn>
void quant_dispatch(const qweight_cuda & w, const char * what, Fn && fn) {
    switch (w.type) {
        case ggml_type::F16:
            fn.template operator()<ggml_type::F16>();
            break;
        case ggml_type::Q8_0:
            fn.template operator()<ggml_type::Q8_0>();
            break;
        case ggml_type::Q4_0:
            fn.template operator()<ggml_type::Q4_0>();
            break;
        case ggml_type::Q4_1:
            fn.template operator()<ggml_type::Q4_1>();
            break;
        case ggml_type::Q5_0:
            fn.template operator()<ggml_type::Q5_0>();
            break;
        case ggml_type::Q5_1:
            fn.template operator()<ggml_type::Q5_1>();
            break;
        case ggml_type::Q5_K:
            fn.template operator()<ggml_type::Q5_K>();
            break;
        case ggml_type::Q4_K:
            fn.template operator()<ggml_type::Q4_K>();
            break;
        case ggml_type::Q6_K:
            fn.template operator()<ggml_type::Q6_K>();
            break;
        default:
            fail("%s: weight type %s is not supported on CUDA", what, ggml_traits(w.type).name);
    }
}

void quant_check(const qweight_cuda & w, const char * what) {
    if (!quant_cuda_supported(w.type)) {
        fail("%s: weight type %s is not supported on CUDA", what, ggml_traits(w.type).name);
    }
    const int64_t qk = ggml_traits(w.type).block_size;
    if (w.n_in <= 0 || w.n_out <= 0 || w.n_in % qk != 0) {
        fail("%s: weight [%lld, %lld] of type %s: n_in must be a positive multiple of %lld", what,
             (long long)w.n_out, (long long)w.n_in, ggml_traits(w.type).name, (long long)qk);
    }
}

// Threads of a matvec CTA for rows of n_units units: the fewest passes over the units that max_warps warps
// allow, then the fewest warps that make them (4096 Q8_0 values: 128 units, 4 warps, one pass; 14336: 448
// units, 7 warps, two passes; F16 at 2 warps: 2 and 7 passes).
template <ggml_type T>
unsigned matvec_threads(int64_t n_in, int max_warps) {
    const int64_t n_units  = n_in / qtraits<T>::unit;
    const int64_t n_passes = ceil_div(n_units, 32 * max_warps);
    return unsigned(32 * std::clamp<int64_t>(ceil_div(n_units, 32 * n_passes), 1, max_warps));
}

// Launchers of each kernel for one weight type (see quant_dispatch).
struct matvec_launch {
    const matvec_segs & segs;
    size_t row_bytes;
    int64_t n_in;
    const matvec_x & in;
    const matvec_rope * rope;  // null: a plain store
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        size_t bytes = 0;
        for (int j = 0; j < segs.n; ++j) {
            bytes += size_t(segs.s[j].n_out) * row_bytes;
        }
        const bool small = bytes <= kSmallLaunchBytes;
        auto * kernel    = rope ? (small ? matvec_kernel<T, true, true> : matvec_kernel<T, true, false>)
                                : (small ? matvec_kernel<T, false, true> : matvec_kernel<T, false, false>);
        launch_pdl(kernel, unsigned(segs.s[segs.n - 1].cta_end), matvec_threads<T>(n_in, matvec_max_warps(T)),
                   0, stream, segs, row_bytes, n_in, in, rope ? *rope : matvec_rope{});
    }
};

struct matvec_swiglu_launch {
    const qweight_cuda & gate;
    const qweight_cuda & up;
    const matvec_x & in;
    float * y;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const bool small = 2 * size_t(gate.n_out) * gate.row_bytes() <= kSmallLaunchBytes;
        launch_pdl(small ? matvec_swiglu_kernel<T, true> : matvec_swiglu_kernel<T, false>,
                   unsigned(ceil_div(gate.n_out, matvec_rows<T>)),
                   matvec_threads<T>(gate.n_in, matvec_max_warps(T)), 0, stream,
                   static_cast<const uint8_t *>(gate.data), static_cast<const uint8_t *>(up.data),
                   gate.row_bytes(), gate.n_in, gate.n_out, in, y);
    }
};

struct dequant_launch {
    const qweight_cuda & w;
    int64_t row0;
    int64_t n_rows;
    __half * out;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const int64_t n = n_rows * (w.n_in / qtraits<T>::unit);
        dequant_rows_f16_kernel<T><<<unsigned(ceil_div(n, kDequantThreads)), kDequantThreads, 0, stream>>>(
            static_cast<const uint8_t *>(w.data), w.row_bytes(), w.n_in, row0, n_rows, out);
        CUDA_CHECK_LAUNCH("dequant_rows_f16_kernel");
    }
};

struct get_rows_launch {
    const qweight_cuda & w;
    const int32_t * ids;
    int64_t n;
    float * out;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const int64_t n_units = n * (w.n_in / qtraits<T>::unit);
        dequant_rows_kernel<T, float><<<unsigned(ceil_div(n_units, 256)), 256, 0, stream>>>(
            static_cast<const uint8_t *>(w.data), w.row_bytes(), w.n_in, n, row_ids{ids}, out);
        CUDA_CHECK_LAUNCH("dequant_rows_kernel");
    }
};

}  // namespace

size_t qweight_cuda::row_bytes() const {
    const ggml_type_traits & t = ggml_traits(type);
    return size_t(n_in / t.block_size) * t.type_size;
}

bool quant_cuda_supported(ggml_type type) {
    switch (type) {
        case ggml_type::F16:
        case ggml_type::Q8_0:
        case ggml_type::Q4_0:
        case ggml_type::Q4_1:
        case ggml_type::Q5_0:
        case ggml_type::Q5_1:
        case ggml_type::Q5_K:
        case ggml_type::Q4_K:
        case ggml_type::Q6_K:
            return true;
        default:
            return false;
    }
}

int matvec_norm_parts(const qweight_cuda & w) {
    return int(ceil_div(w.n_out, matvec_rows_of(w.type)));
}

size_t matvec_cuda_work_bytes(const qweight_cuda & w) {
    // n_in is a multiple of 32, so the float2 array after the int8 values stays 8-byte aligned.
    const bool q8 = w.type == ggml_type::Q8_0 || w.type == ggml_type::Q4_K || w.type == ggml_type::Q6_K;
    return q8 ? size_t(w.n_in) + size_t(w.n_in / 32) * sizeof(float2) : 0;
}

namespace {

void matvec_check_work(const qweight_cuda & w, const void * work, const char * what) {
    if (matvec_cuda_work_bytes(w) > 0 && work == nullptr) {
        fail("%s: type %s needs a workspace of %zu bytes", what, ggml_traits(w.type).name,
             matvec_cuda_work_bytes(w));
    }
}

// x in the forms the kernels of these weights read: qx and ds in work when some type needs them.
matvec_x matvec_input(const qweight_cuda * const * ws, int n, const matvec_in & x, void * work,
                      cudaStream_t stream) {
    matvec_x in{x.x, x.part, x.n_part, x.eps, nullptr, nullptr};
    int64_t n_in = 0;
    for (int j = 0; j < n; ++j) {
        if (matvec_cuda_work_bytes(*ws[j]) > 0) {
            n_in = ws[j]->n_in;
        }
    }
    if (n_in > 0) {
        const int64_t n_blocks = n_in / 32;
        auto * qx              = static_cast<int8_t *>(work);
        auto * ds              = reinterpret_cast<float2 *>(qx + n_in);
        launch_pdl(quantize_x_q8_kernel, unsigned(ceil_div(n_blocks, 8)), 256, 0, stream, x.x, x.part,
                   x.n_part, x.eps, n_in, qx, ds);
        CUDA_CHECK_LAUNCH("quantize_x_q8_kernel");
        in.qx = qx;
        in.ds = ds;
    }
    return in;
}

}  // namespace

void matvec_cuda(const qweight_cuda & w, const float * x, float * y, void * work, cudaStream_t stream) {
    const matvec_out out{w, nullptr, y};
    matvec_multi_cuda(&out, 1, {x}, work, stream);
}

namespace {

// matvec_multi_cuda, with the Q/K/V epilogue when rope is not null (outs = {q, k, v}).
void matvec_multi(const matvec_out * outs, int n, const matvec_in & x, void * work, matvec_rope * rope,
                  cudaStream_t stream) {
    if (n < 1 || n > kMatvecSegs) {
        fail("matvec_multi_cuda: %d products (1 to %d)", n, kMatvecSegs);
    }
    const qweight_cuda * ws[kMatvecSegs];
    for (int j = 0; j < n; ++j) {
        ws[j] = &outs[j].w;
        quant_check(outs[j].w, "matvec_cuda");
        matvec_check_work(outs[j].w, work, "matvec_cuda");
        if (outs[j].w.n_in != outs[0].w.n_in) {
            fail("matvec_multi_cuda: inputs of %lld and %lld values", (long long)outs[0].w.n_in,
                 (long long)outs[j].w.n_in);
        }
    }
    const matvec_x in = matvec_input(ws, n, x, work, stream);
    for (int j0 = 0; j0 < n;) {
        matvec_segs segs{};
        int j = j0;
        for (int cta = 0; j < n && outs[j].w.type == outs[j0].w.type; ++j) {
            const matvec_out & o = outs[j];
            cta += int(ceil_div(o.w.n_out, matvec_rows_of(o.w.type)));
            segs.s[segs.n++] = {static_cast<const uint8_t *>(o.w.data),
                                o.bias,
                                o.y,
                                o.w.n_out,
                                cta,
                                o.add,
                                o.norm_g,
                                o.norm_g != nullptr ? o.xn : nullptr,
                                o.norm_g != nullptr ? o.part : nullptr};
        }
        if (rope) {
            rope->role0 = j0;
        }
        quant_dispatch(outs[j0].w, "matvec_cuda",
                       matvec_launch{segs, outs[j0].w.row_bytes(), outs[j0].w.n_in, in, rope, stream});
        j0 = j;
    }
}

}  // namespace

void matvec_multi_cuda(const matvec_out * outs, int n, const matvec_in & x, void * work,
                       cudaStream_t stream) {
    matvec_multi(outs, n, x, work, nullptr, stream);
}

void matvec_qkv_rope_cuda(const matvec_out (&outs)[3], const matvec_in & x, void * work,
                          const rope_params & r, const kv_store_dst & dst, cudaStream_t stream) {
    const int64_t n_kv = outs[1].w.n_out / std::max(1, r.head_dim);
    if (!r.adjacent || r.head_dim <= 0 || r.head_dim % 2 != 0 || r.n_rot % 2 != 0 || r.n_rot > r.head_dim ||
        outs[1].w.n_out % r.head_dim != 0 || outs[2].w.n_out != outs[1].w.n_out || n_kv > kRopeStoreHeads) {
        fail(
            "matvec_qkv_rope_cuda: needs adjacent RoPE pairs, an even n_rot <= head_dim %d and at most %d KV "
            "heads of whole rows",
            r.head_dim, kRopeStoreHeads);
    }
    for (const matvec_out & o : outs) {
        if (o.add || o.norm_g != nullptr) {
            fail("matvec_qkv_rope_cuda: the Q/K/V products neither add to their outputs nor prepare a norm");
        }
    }
    matvec_rope rope{r, dst, 0};
    matvec_multi(outs, 3, x, work, &rope, stream);
}

void matvec_swiglu_cuda(const qweight_cuda & gate, const qweight_cuda & up, const matvec_in & x, float * y,
                        void * work, cudaStream_t stream) {
    quant_check(gate, "matvec_swiglu_cuda");
    matvec_check_work(gate, work, "matvec_swiglu_cuda");
    if (up.type != gate.type || up.n_in != gate.n_in || up.n_out != gate.n_out) {
        fail("matvec_swiglu_cuda: gate and up differ in type or shape");
    }
    const qweight_cuda * ws[1] = {&gate};
    const matvec_x in          = matvec_input(ws, 1, x, work, stream);
    quant_dispatch(gate, "matvec_swiglu_cuda", matvec_swiglu_launch{gate, up, in, y, stream});
}

void dequantize_f16_cuda(const qweight_cuda & w, int64_t row0, int64_t n_rows, __half * out,
                         cudaStream_t stream) {
    quant_check(w, "dequantize_f16_cuda");
    if (row0 < 0 || n_rows < 0 || row0 + n_rows > w.n_out) {
        fail("dequantize_f16_cuda: rows [%lld, %lld) outside the weight's %lld rows", (long long)row0,
             (long long)(row0 + n_rows), (long long)w.n_out);
    }
    if (n_rows > 0) {
        quant_dispatch(w, "dequantize_f16_cuda", dequant_launch{w, row0, n_rows, out, stream});
    }
}

void get_rows_cuda(const qweight_cuda & w, const int32_t * ids, int64_t n, float * out, cudaStream_t stream) {
    quant_check(w, "get_rows_cuda");
    if (n > 0) {
        quant_dispatch(w, "get_rows_cuda", get_rows_launch{w, ids, n, out, stream});
    }
}

}  // namespace tca
