// Small fp32 vector kernels used by the CPU attention (AVX-512 / AVX2 when compiled for them).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tca {

inline float vec_dot(const float * a, const float * b, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
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

#if defined(__AVX512F__)
// exp(x) for x <= 0 (softmax arguments), relative error below 2e-7: exp(x) = 2^n * 2^f with n the
// nearest integer to x / ln 2 and 2^f, |f| <= 1/2, from its degree-6 Taylor series in f ln 2.
inline __m512 vec_exp512(__m512 x) {
    x              = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));  // keeps 2^n a normal number
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p       = _mm512_set1_ps(1.5403530393381609e-4f);
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p              = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

// s[i] = exp(s[i] - m) for i < n; returns the sum. Every s[i] <= m.
inline float vec_exp_sum(float * s, int64_t n, float m) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc      = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = vec_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        _mm512_storeu_ps(s + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    sum = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; ++i) {
        s[i] = std::exp(s[i] - m);
        sum += s[i];
    }
    return sum;
}

}  // namespace tca
