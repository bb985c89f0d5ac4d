// SIMD dequantization (AVX-512) of the quantized types: the codes are decoded to bytes as in the dot
// kernels (quants_simd.h), widened to 16 fp32 lanes and scaled. Same formulas as the scalar loops in
// quants_dequant.cpp (a product, then the offset), so the results agree to fp32 rounding.
#include "quants_simd.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__)

#include "fp16.h"

namespace tca {

namespace {

inline __m512 widen_u8(__m128i v) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}
inline __m512 widen_i8(__m128i v) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

// y[0, 32) = d * u + m for 32 unsigned codes.
inline void store_affine(__m256i u, float d, float m, float * y) {
    const __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(m);
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(vd, widen_u8(_mm256_castsi256_si128(u))), vm));
    _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(vd, widen_u8(_mm256_extracti128_si256(u, 1))), vm));
}

// y[0, 32) = d * q for 32 signed codes.
inline void store_scaled(__m256i q, float d, float * y) {
    const __m512 vd = _mm512_set1_ps(d);
    _mm512_storeu_ps(y, _mm512_mul_ps(vd, widen_i8(_mm256_castsi256_si128(q))));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(vd, widen_i8(_mm256_extracti128_si256(q, 1))));
}

template <typename block, int offset>
void dequant_q32_offset(const block * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        __m256i u = unpack_nibbles(b[i].qs);
        if constexpr (offset == 16) {
            u = _mm256_or_si256(u, bit4_from_mask(load_u32(b[i].qh)));
        }
        store_scaled(_mm256_sub_epi8(u, _mm256_set1_epi8(offset)), fp16_to_fp32(b[i].d), y);
    }
}

template <typename block, bool has_qh>
void dequant_q32_min(const block * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        __m256i u = unpack_nibbles(b[i].qs);
        if constexpr (has_qh) {
            u = _mm256_or_si256(u, bit4_from_mask(load_u32(b[i].qh)));
        }
        store_affine(u, fp16_to_fp32(b[i].d), fp16_to_fp32(b[i].m), y);
    }
}

void dequant_q8_0(const block_q8_0 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        store_scaled(_mm256_loadu_si256((const __m256i *)b[i].qs), fp16_to_fp32(b[i].d), y);
    }
}

template <typename block, bool has_qh>
void dequant_q45_K(const block * b, float * y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        uint8_t sc[8], m[8];
        unpack_scales_k4(b[i].scales, sc, m);
        __m256i hbits;
        if constexpr (has_qh) {
            hbits = _mm256_loadu_si256((const __m256i *)b[i].qh);
        }
        for (int k = 0; k < 4; ++k, y += 64) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * k));
            __m256i u0        = _mm256_and_si256(raw, m4);
            __m256i u1        = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if constexpr (has_qh) {
                u0 = _mm256_or_si256(u0, bit4_from_bytes(hbits, 2 * k));
                u1 = _mm256_or_si256(u1, bit4_from_bytes(hbits, 2 * k + 1));
            }
            // d sc q - dmin m, the minimum negated exactly
            store_affine(u0, d * float(sc[2 * k]), -(dmin * float(m[2 * k])), y);
            store_affine(u1, d * float(sc[2 * k + 1]), -(dmin * float(m[2 * k + 1])), y + 32);
        }
    }
}

void dequant_q6_K(const block_q6_K * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int h = 0; h < 2; ++h) {
            __m256i u[4];
            q6_K_codes(b[i], h, u);
            for (int k = 0; k < 4; ++k, y += 32) {
                const __m256i q = _mm256_sub_epi8(u[k], _mm256_set1_epi8(32));
                const int j     = 8 * h + 2 * k;  // sub-blocks of 16 with scales j, j + 1
                _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_set1_ps(d * float(b[i].scales[j])),
                                                  widen_i8(_mm256_castsi256_si128(q))));
                _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_set1_ps(d * float(b[i].scales[j + 1])),
                                                       widen_i8(_mm256_extracti128_si256(q, 1))));
            }
        }
    }
}

}  // namespace

bool dequantize_row_simd(ggml_type type, const void * src, float * dst, int64_t n) {
    switch (type) {
        case ggml_type::Q4_0:
            dequant_q32_offset<block_q4_0, 8>(static_cast<const block_q4_0 *>(src), dst, n / 32);
            return true;
        case ggml_type::Q5_0:
            dequant_q32_offset<block_q5_0, 16>(static_cast<const block_q5_0 *>(src), dst, n / 32);
            return true;
        case ggml_type::Q4_1:
            dequant_q32_min<block_q4_1, false>(static_cast<const block_q4_1 *>(src), dst, n / 32);
            return true;
        case ggml_type::Q5_1:
            dequant_q32_min<block_q5_1, true>(static_cast<const block_q5_1 *>(src), dst, n / 32);
            return true;
        case ggml_type::Q8_0:
            dequant_q8_0(static_cast<const block_q8_0 *>(src), dst, n / 32);
            return true;
        case ggml_type::Q4_K:
            dequant_q45_K<block_q4_K, false>(static_cast<const block_q4_K *>(src), dst, n / QK_K);
            return true;
        case ggml_type::Q5_K:
            dequant_q45_K<block_q5_K, true>(static_cast<const block_q5_K *>(src), dst, n / QK_K);
            return true;
        case ggml_type::Q6_K:
            dequant_q6_K(static_cast<const block_q6_K *>(src), dst, n / QK_K);
            return true;
        default:
            return false;
    }
}

}  // namespace tca

#else

namespace tca {

bool dequantize_row_simd(ggml_type, const void *, float *, int64_t) {
    return false;
}

}  // namespace tca

#endif
