// ggml block layouts read on the device, and dequantization of one "unit" of consecutive weights: a
// whole block for the 32-element types, a 64-element pair of sub-blocks for Q4_K (they share bytes),
// a 32-element group of one half for Q6_K. Layouts follow ggml's block definitions.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "ggml_types.h"

namespace tca {

struct block_q8_0 {
    __half d;
    int8_t qs[32];
};
struct block_q4_0 {
    __half d;
    uint8_t qs[16];  // x[j] = lo nibble of qs[j], x[j + 16] = hi nibble, both minus 8
};
struct block_q4_1 {
    __half d;
    __half m;
    uint8_t qs[16];
};
struct block_q4_k {
    __half d;
    __half dmin;
    uint8_t scales[12];  // 8 six-bit (scale, min) pairs
    uint8_t qs[128];
};
struct block_q6_k {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    __half d;
};
struct block_q5_0 {
    __half d;
    uint8_t qh[4];   // bit j: fifth bit of element j
    uint8_t qs[16];  // like Q4_0; elements minus 16
};
struct block_q5_1 {
    __half d;
    __half m;
    uint8_t qh[4];
    uint8_t qs[16];
};
struct block_q5_k {
    __half d;
    __half dmin;
    uint8_t scales[12];
    uint8_t qh[32];  // bit 2p (low nibbles) and 2p + 1 (high) of byte l: fifth bits of sub-blocks 2p, 2p + 1
    uint8_t qs[128];
};
static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 &&
                  sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24 && sizeof(block_q4_k) == 144 &&
                  sizeof(block_q5_k) == 176 && sizeof(block_q6_k) == 210,
              "ggml block sizes");

// Per type: elements per block, elements per unit, bytes per block.
template <ggml_type T>
struct qtraits;
template <>
struct qtraits<ggml_type::F16> {
    static constexpr int qk = 32, unit = 32, bytes = 64;  // F16 handled as blocks of 32 halves
};
template <>
struct qtraits<ggml_type::Q8_0> {
    static constexpr int qk = 32, unit = 32, bytes = 34;
};
template <>
struct qtraits<ggml_type::Q4_0> {
    static constexpr int qk = 32, unit = 32, bytes = 18;
};
template <>
struct qtraits<ggml_type::Q4_1> {
    static constexpr int qk = 32, unit = 32, bytes = 20;
};
template <>
struct qtraits<ggml_type::Q5_0> {
    static constexpr int qk = 32, unit = 32, bytes = 22;
};
template <>
struct qtraits<ggml_type::Q5_1> {
    static constexpr int qk = 32, unit = 32, bytes = 24;
};
template <>
struct qtraits<ggml_type::Q5_K> {
    static constexpr int qk = 256, unit = 64, bytes = 176;
};
template <>
struct qtraits<ggml_type::Q4_K> {
    static constexpr int qk = 256, unit = 64, bytes = 144;
};
template <>
struct qtraits<ggml_type::Q6_K> {
    static constexpr int qk = 256, unit = 32, bytes = 210;
};

// float(v) - bias for 0 <= v < 2^22 without the int-to-float converter (a quarter-rate unit that bounds
// these kernels): v placed in the mantissa of 2^23, then 2^23 + bias subtracted; exact.
template <int BIAS>
__device__ __forceinline__ float small_to_float(uint32_t v) {
    return __uint_as_float(0x4B000000u | v) - float(8388608 + BIAS);
}

__device__ __forceinline__ void q4k_scale_min(int j, const uint8_t * q, float & sc, float & mn) {
    if (j < 4) {
        sc = float(q[j] & 63);
        mn = float(q[j + 4] & 63);
    } else {
        sc = float((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        mn = float((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Writes the elements of unit u of a row (row: its first byte) into y[0, unit), in row order: unit u
// covers the row's elements [u * unit, (u + 1) * unit).
template <ggml_type T>
__device__ __forceinline__ void dequant_unit(const uint8_t * row, int64_t u, float * y);

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::F16>(const uint8_t * row, int64_t u, float * y) {
    const uint4 * src = reinterpret_cast<const uint4 *>(row + u * 64);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const uint4 raw   = src[c];
        const __half2 * h = reinterpret_cast<const __half2 *>(&raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f       = __half22float2(h[e]);
            y[8 * c + 2 * e]     = f.x;
            y[8 * c + 2 * e + 1] = f.y;
        }
    }
}

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q8_0>(const uint8_t * row, int64_t u, float * y) {
    const block_q8_0 * b = reinterpret_cast<const block_q8_0 *>(row) + u;
    const float d        = __half2float(b->d);
    // qs starts 2 bytes into a 34-byte block: read it as 16-bit words.
    const uint16_t * w = reinterpret_cast<const uint16_t *>(b->qs);
#pragma unroll
    for (int e = 0; e < 16; ++e) {
        const uint16_t v = w[e];
        y[2 * e]         = d * small_to_float<128>((v & 0xFF) ^ 0x80);  // int8 + 128
        y[2 * e + 1]     = d * small_to_float<128>((v >> 8) ^ 0x80);
    }
}

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q4_0>(const uint8_t * row, int64_t u, float * y) {
    const block_q4_0 * b = reinterpret_cast<const block_q4_0 *>(row) + u;
    const float d        = __half2float(b->d);
    const uint16_t * w   = reinterpret_cast<const uint16_t *>(b->qs);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const uint16_t v  = w[e];
        y[2 * e]          = d * small_to_float<8>(v & 0xF);
        y[2 * e + 1]      = d * small_to_float<8>((v >> 8) & 0xF);
        y[16 + 2 * e]     = d * small_to_float<8>((v >> 4) & 0xF);
        y[16 + 2 * e + 1] = d * small_to_float<8>(v >> 12);
    }
}

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q4_1>(const uint8_t * row, int64_t u, float * y) {
    const block_q4_1 * b = reinterpret_cast<const block_q4_1 *>(row) + u;
    const float d        = __half2float(b->d);
    const float m        = __half2float(b->m);
    const uint32_t * w   = reinterpret_cast<const uint32_t *>(b->qs);  // 20-byte blocks: 4-byte aligned
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const uint32_t v = w[c];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            y[4 * c + e]      = d * small_to_float<0>((v >> (8 * e)) & 0xF) + m;
            y[16 + 4 * c + e] = d * small_to_float<0>((v >> (8 * e + 4)) & 0xF) + m;
        }
    }
}

// Q5_0 and Q5_1: element j has the low 4 bits in qs like Q4_0, the fifth in bit j of qh.
template <ggml_type T, int BIAS, typename Block>
__device__ __forceinline__ void dequant_q5(const Block * b, float d, float m, float * y) {
    const uint16_t * w  = reinterpret_cast<const uint16_t *>(b->qs);  // 2-byte aligned in both layouts
    const uint16_t * hw = reinterpret_cast<const uint16_t *>(b->qh);
    const uint32_t qh   = uint32_t(hw[0]) | (uint32_t(hw[1]) << 16);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const uint32_t v = w[e];
        const int j      = 2 * e;
        y[j]             = d * small_to_float<BIAS>((v & 0xF) | (((qh >> j) & 1) << 4)) + m;
        y[j + 1]         = d * small_to_float<BIAS>(((v >> 8) & 0xF) | (((qh >> (j + 1)) & 1) << 4)) + m;
        y[16 + j]        = d * small_to_float<BIAS>(((v >> 4) & 0xF) | (((qh >> (j + 16)) & 1) << 4)) + m;
        y[17 + j]        = d * small_to_float<BIAS>((v >> 12) | (((qh >> (j + 17)) & 1) << 4)) + m;
    }
}

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q5_0>(const uint8_t * row, int64_t u, float * y) {
    const block_q5_0 * b = reinterpret_cast<const block_q5_0 *>(row) + u;
    dequant_q5<ggml_type::Q5_0, 16>(b, __half2float(b->d), 0.0f, y);
}

template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q5_1>(const uint8_t * row, int64_t u, float * y) {
    const block_q5_1 * b = reinterpret_cast<const block_q5_1 *>(row) + u;
    dequant_q5<ggml_type::Q5_1, 0>(b, __half2float(b->d), __half2float(b->m), y);
}

// Unit u of Q5_K: like Q4_K (pair p of super-block u / 4), fifth bits from bits 2p and 2p + 1 of qh[l].
template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q5_K>(const uint8_t * row, int64_t u, float * y) {
    const block_q5_k * b = reinterpret_cast<const block_q5_k *>(row) + u / 4;
    const int p          = int(u % 4);
    const float d        = __half2float(b->d);
    const float dmin     = __half2float(b->dmin);
    float sc0, mn0, sc1, mn1;
    q4k_scale_min(2 * p, b->scales, sc0, mn0);
    q4k_scale_min(2 * p + 1, b->scales, sc1, mn1);
    const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
    const uint8_t * ql = b->qs + 32 * p;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const uint32_t q = ql[l];
        const uint32_t h = uint32_t(b->qh[l]) >> (2 * p);
        y[l]             = d0 * small_to_float<0>((q & 0xF) | ((h & 1) << 4)) - m0;
        y[32 + l]        = d1 * small_to_float<0>((q >> 4) | ((h & 2) << 3)) - m1;
    }
}

// Unit u of Q4_K: sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles) of super-block u / 4, p = u % 4.
template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q4_K>(const uint8_t * row, int64_t u, float * y) {
    const block_q4_k * b = reinterpret_cast<const block_q4_k *>(row) + u / 4;
    const int p          = int(u % 4);
    const float d        = __half2float(b->d);
    const float dmin     = __half2float(b->dmin);
    float sc0, mn0, sc1, mn1;
    q4k_scale_min(2 * p, b->scales, sc0, mn0);
    q4k_scale_min(2 * p + 1, b->scales, sc1, mn1);
    const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
    const uint4 * src = reinterpret_cast<const uint4 *>(b->qs + 32 * p);  // 16-byte aligned (144 = 9 * 16)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
        const uint4 raw    = src[c];
        const uint32_t * w = reinterpret_cast<const uint32_t *>(&raw);
#pragma unroll
        for (int e = 0; e < 16; ++e) {
            const uint32_t q   = (w[e / 4] >> (8 * (e % 4))) & 0xFF;
            y[16 * c + e]      = d0 * small_to_float<0>(q & 0xF) - m0;
            y[32 + 16 * c + e] = d1 * small_to_float<0>(q >> 4) - m1;
        }
    }
}

// Unit u of Q6_K: super-block u / 8, half h = (u % 8) / 4, group k = u % 4: elements 128 h + 32 k + l.
template <>
__device__ __forceinline__ void dequant_unit<ggml_type::Q6_K>(const uint8_t * row, int64_t u, float * y) {
    const block_q6_k * b = reinterpret_cast<const block_q6_k *>(row) + u / 8;
    const int h          = int(u % 8) / 4;
    const int k          = int(u % 4);
    const float d        = __half2float(b->d);
    const uint8_t * ql   = b->ql + 64 * h + 32 * (k & 1);
    const uint8_t * qh   = b->qh + 32 * h;
    const int shl        = k >= 2 ? 4 : 0;
    const int shh        = 2 * k;
    const float d_lo     = d * float(b->scales[8 * h + 2 * k]);
    const float d_hi     = d * float(b->scales[8 * h + 2 * k + 1]);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const uint32_t q = ((ql[l] >> shl) & 0xF) | (((qh[l] >> shh) & 3) << 4);
        y[l]             = (l < 16 ? d_lo : d_hi) * small_to_float<32>(q);
    }
}

}  // namespace tca
