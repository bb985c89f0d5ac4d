// Internal to the quants module: the SIMD kernels (quants_dot_simd.cpp, quants_dequant_simd.cpp) and
// the vector helpers they share. The lookups return nullptr / false where a build has no SIMD kernel.
#pragma once

#include "quants.h"

namespace tca {

vec_dot_q8_fn vec_dot_q8_simd(ggml_type type);
vec_dot_f32_fn vec_dot_f32_simd(ggml_type type);

// Dequantizes n elements with SIMD; false when this build has no SIMD kernel for the type.
bool dequantize_row_simd(ggml_type type, const void * src, float * dst, int64_t n);

}  // namespace tca

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <cstring>

namespace tca {

// 8 int32 lanes: lane k = sum_{j < 4} u[4k + j] * s[4k + j], u unsigned and s signed bytes.
// maddubs saturates its int16 pair sums, safe while u <= 128 and |s| <= 127.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r        = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r        = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

// 32 nibble codes of a 32-block in element order: low nibbles of the 16 bytes, then the high ones.
inline __m256i unpack_nibbles(const uint8_t * qs) {
    // the 16 bytes in both halves, the upper half shifted right by 4 (one load, one shift)
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0xF));
}

// Byte j = 0x10 where bit j of bits is set, else 0.
inline __m256i bit4_from_mask(uint32_t bits) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10));
#else
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                          2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit  = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v          = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), shuf);
    v                  = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

inline __m256i load_x(const q8_act_row & x, int64_t b) {
    return _mm256_loadu_si256((const __m256i *)(x.qs + b * 32));
}

inline uint32_t load_u32(const uint8_t * p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// The 6-bit scales (sc) and minimums (m) of the 8 sub-blocks of a Q4_K / Q5_K block, as bytes.
inline void unpack_scales_k4(const uint8_t * scales, uint8_t sc[8], uint8_t m[8]) {
    uint32_t u[3];
    std::memcpy(u, scales, 12);
    const uint32_t v[4] = {
        u[0] & 0x3f3f3f3f,
        (u[2] & 0x0f0f0f0f) | ((u[0] >> 2) & 0x30303030),
        u[1] & 0x3f3f3f3f,
        ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 2) & 0x30303030),
    };
    std::memcpy(sc, v, 8);
    std::memcpy(m, v + 2, 8);
}

// The codes 0..63 of half h (elements 128 h + 32 k + l) of a Q6_K block, u[k] for k = 0..3.
inline void q6_K_codes(const block_q6_K & b, int h, __m256i u[4]) {
    const __m256i m4  = _mm256_set1_epi8(0xF);
    const __m256i c30 = _mm256_set1_epi8(0x30);
    const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b.ql + 64 * h));
    const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b.ql + 64 * h + 32));
    const __m256i qh  = _mm256_loadu_si256((const __m256i *)(b.qh + 32 * h));
    u[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), c30));
    u[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), c30));
    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, c30));
    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), c30));
}

// Bit 4 of each of the 32 codes from bit j of the bytes of qh: byte l = 0x10 where bit j of qh[l] is set.
inline __m256i bit4_from_bytes(__m256i qh, int j) {
    const __m256i m = _mm256_set1_epi8(char(1 << j));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m), m), _mm256_set1_epi8(0x10));
}

}  // namespace tca
#endif
