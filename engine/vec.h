// Small fp32 vector kernels used by the CPU attention (AVX-512 / AVX2 when compiled for them).
#pragma once

#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#    include <immintrin.h>
#endif

namespace tca {

inline float vec_dot(const float * a, const float * b, int64_t n) {
    int64_t i   = 0;
    float   sum = 0.0f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    }
    sum = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s        = _mm_hadd_ps(s, s);
    s        = _mm_hadd_ps(s, s);
    sum      = _mm_cvtss_f32(s);
#endif
    for (; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

// y += alpha * x
inline void vec_axpy(float * y, const float * x, float alpha, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 va = _mm512_set1_ps(alpha);
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    }
#elif defined(__AVX2__)
    const __m256 va = _mm256_set1_ps(alpha);
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
#endif
    for (; i < n; ++i) {
        y[i] += alpha * x[i];
    }
}

// y *= alpha
inline void vec_scale(float * y, float alpha, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        y[i] *= alpha;
    }
}

}  // namespace tca
