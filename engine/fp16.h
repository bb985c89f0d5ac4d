// Scalar and row conversions between IEEE half (fp16), bfloat16 and fp32. The F16C instructions are
// used when the build enables them; the portable bit-level versions are always compiled.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace tca {

inline uint32_t fp32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

inline float fp32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

// Exact fp16 -> fp32 (every half value is representable), including subnormals, inf and NaN.
inline float fp16_to_fp32_portable(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp  = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) {
        return fp32_from_bits(sign | 0x7f800000 | (mant << 13));
    }
    if (exp == 0) {
        // zero or subnormal: mant * 2^-24, exact in fp32
        const float v = float(mant) * fp32_from_bits(0x33800000);
        return sign ? -v : v;
    }
    return fp32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

// fp32 -> fp16 rounding to nearest even; overflow gives inf, NaN stays NaN.
inline uint16_t fp32_to_fp16_portable(float f) {
    const uint32_t u    = fp32_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000);
    const uint32_t a    = u & 0x7fffffff;
    if (a >= 0x7f800000) {
        return uint16_t(sign | 0x7c00 | (a > 0x7f800000 ? 0x200 : 0));
    }
    if (a >= 0x477ff000) {  // rounds to >= 65520: overflow
        return uint16_t(sign | 0x7c00);
    }
    if (a < 0x38800000) {  // below the smallest normal half 2^-14: subnormal or zero
        // Adding 0.5 makes the fp32 hardware round the value to a multiple of 2^-24 (to nearest even).
        const float v    = fp32_from_bits(a) + 0.5f;
        const uint32_t r = fp32_bits(v) - 0x3f000000;
        return uint16_t(sign | r);
    }
    const uint32_t mant_odd = (a >> 13) & 1;
    const uint32_t r        = a + 0xfff + mant_odd - (112u << 23);
    return uint16_t(sign | (r >> 13));
}

inline float fp16_to_fp32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return fp16_to_fp32_portable(h);
#endif
}

inline uint16_t fp32_to_fp16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    return fp32_to_fp16_portable(f);
#endif
}

// bf16 is the upper half of an fp32.
inline float bf16_to_fp32(uint16_t h) {
    return fp32_from_bits(uint32_t(h) << 16);
}

inline void fp16_to_fp32_row(const uint16_t * src, float * dst, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) {
        dst[i] = fp16_to_fp32(src[i]);
    }
}

inline void fp32_to_fp16_row(const float * src, uint16_t * dst, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
#endif
    for (; i < n; ++i) {
        dst[i] = fp32_to_fp16(src[i]);
    }
}

inline void bf16_to_fp32_row(const uint16_t * src, float * dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        dst[i] = bf16_to_fp32(src[i]);
    }
}

}  // namespace tca
