// SIMD dot products of weight rows with 8-bit activations (AVX2, with AVX-512 VNNI when the build has
// it) and of float rows with fp32 activations (AVX-512). One 32-element weight block at a time: decode
// its codes to 32 bytes, take the u8 x s8 dot product with the activation block into 8 int32 lanes,
// convert and accumulate with the block's scale product. Zen 4 runs 512-bit integer ops as two 256-bit
// halves, so 256-bit vectors lose nothing there and keep the AVX2 fallback the same code.
#include "quants_dot.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "fp16.h"

namespace tca {

namespace {

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
    const __m128i raw = _mm_loadu_si128((const __m128i *) qs);
    const __m256i v   = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(v, _mm256_set1_epi8(0xF));
}

// Byte j = 0x10 where bit j of bits is set, else 0.
inline __m256i bit4_from_mask(uint32_t bits) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10));
#else
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2,
                                          2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit  = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i       v    = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), shuf);
    v                  = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
#endif
}

inline __m256i load_x(const q8_act_row & x, int64_t b) { return _mm256_loadu_si256((const __m256i *) (x.qs + b * 32)); }

inline uint32_t load_u32(const uint8_t * p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// Types whose 32-blocks have codes u and x = d * (u - offset) (+ m when has_min).
template <typename block, bool has_min, bool has_qh, int offset>
float dot_q32(int64_t n, const void * w, const q8_act_row & x) {
    const block * b    = static_cast<const block *>(w);
    __m256        acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float         corr = 0.0f;  // sum over blocks of m s (has_min) or d s (offset)
    const int64_t nb   = n / 32;
    for (int64_t i = 0; i < nb; ++i) {
        __m256i u = unpack_nibbles(b[i].qs);
        if constexpr (has_qh) {
            u = _mm256_or_si256(u, bit4_from_mask(load_u32(b[i].qh)));
        }
        const float  d = fp16_to_fp32(b[i].d);
        const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(u, load_x(x, i)));
        if (i % 2 == 0) {
            acc0 = _mm256_fmadd_ps(p, _mm256_set1_ps(d * x.d[i]), acc0);
        } else {
            acc1 = _mm256_fmadd_ps(p, _mm256_set1_ps(d * x.d[i]), acc1);
        }
        if constexpr (has_min) {
            corr += fp16_to_fp32(b[i].m) * x.s[i];
        } else {
            corr += d * x.s[i];
        }
    }
    const float y = hsum(_mm256_add_ps(acc0, acc1));
    return has_min ? y + corr : y - float(offset) * corr;
}

float dot_q8_0(int64_t n, const void * w, const q8_act_row & x) {
    const block_q8_0 * b    = static_cast<const block_q8_0 *>(w);
    __m256             acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    const int64_t      nb   = n / 32;
    for (int64_t i = 0; i < nb; ++i) {
        const __m256i q = _mm256_loadu_si256((const __m256i *) b[i].qs);
        // |q| as unsigned, the sign moved onto x: |q| <= 128, |x| <= 127
        const __m256i s = dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(load_x(x, i), q));
        const __m256  p = _mm256_cvtepi32_ps(s);
        const __m256  f = _mm256_set1_ps(fp16_to_fp32(b[i].d) * x.d[i]);
        if (i % 2 == 0) {
            acc0 = _mm256_fmadd_ps(p, f, acc0);
        } else {
            acc1 = _mm256_fmadd_ps(p, f, acc1);
        }
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

// Q4_K / Q5_K: per sub-block j, d sc_j dx_j sum(u x) - dmin m_j s_j.
template <typename block, bool has_qh>
float dot_q45_K(int64_t n, const void * w, const q8_act_row & x) {
    const block * b    = static_cast<const block *>(w);
    __m256        acc  = _mm256_setzero_ps();
    float         mins = 0.0f;
    const __m256i m4   = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d    = fp16_to_fp32(b[i].d);
        const float dmin = fp16_to_fp32(b[i].dmin);
        uint8_t     sc[8], m[8];
        for (int j = 0; j < 8; ++j) {
            q4_K_scale_min(j, b[i].scales, sc[j], m[j]);
        }
        __m256i hbits;
        if constexpr (has_qh) {
            hbits = _mm256_loadu_si256((const __m256i *) b[i].qh);
        }
        const int64_t xb = i * 8;
        for (int k = 0; k < 4; ++k) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *) (b[i].qs + 32 * k));
            __m256i       u0  = _mm256_and_si256(raw, m4);
            __m256i       u1  = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if constexpr (has_qh) {
                // bit 2k of qh[l] is bit 4 of u0[l], bit 2k + 1 that of u1[l]
                const __m256i h0 = _mm256_set1_epi8(char(1 << (2 * k)));
                const __m256i h1 = _mm256_set1_epi8(char(2 << (2 * k)));
                const __m256i b4 = _mm256_set1_epi8(0x10);
                u0 = _mm256_or_si256(u0, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, h0), h0), b4));
                u1 = _mm256_or_si256(u1, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, h1), h1), b4));
            }
            const __m256 p0 = _mm256_cvtepi32_ps(dot_u8s8(u0, load_x(x, xb + 2 * k)));
            const __m256 p1 = _mm256_cvtepi32_ps(dot_u8s8(u1, load_x(x, xb + 2 * k + 1)));
            acc = _mm256_fmadd_ps(p0, _mm256_set1_ps(d * float(sc[2 * k]) * x.d[xb + 2 * k]), acc);
            acc = _mm256_fmadd_ps(p1, _mm256_set1_ps(d * float(sc[2 * k + 1]) * x.d[xb + 2 * k + 1]), acc);
        }
        float ms = 0.0f;
        for (int j = 0; j < 8; ++j) {
            ms += float(m[j]) * x.s[xb + j];
        }
        mins += dmin * ms;
    }
    return hsum(acc) - mins;
}

float dot_q6_K(int64_t n, const void * w, const q8_act_row & x) {
    const block_q6_K * b   = static_cast<const block_q6_K *>(w);
    __m256             acc = _mm256_setzero_ps();
    const __m256i      m4  = _mm256_set1_epi8(0xF);
    const __m256i      c30 = _mm256_set1_epi8(0x30);
    const __m256i      c32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *) (b[i].ql + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *) (b[i].ql + 64 * h + 32));
            const __m256i qh  = _mm256_loadu_si256((const __m256i *) (b[i].qh + 32 * h));
            // codes 0..63 of elements 32k + l of this half, k = 0..3
            const __m256i u[4] = {
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), c30)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), c30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, c30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), c30)),
            };
            for (int k = 0; k < 4; ++k) {
                const int64_t xb = i * 8 + 4 * h + k;
                const __m256i xv = load_x(x, xb);
                // lanes 0-3 cover the first 16 elements (scale j), lanes 4-7 the next 16 (scale j + 1)
                const __m256i s  = _mm256_sub_epi32(dot_u8s8(u[k], xv), dot_u8s8(c32, xv));
                const int     j  = 8 * h + 2 * k;
                const __m256  f  = _mm256_mul_ps(
                    _mm256_set_m128(_mm_set1_ps(float(b[i].scales[j + 1])), _mm_set1_ps(float(b[i].scales[j]))),
                    _mm256_set1_ps(d * x.d[xb]));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc);
            }
        }
    }
    return hsum(acc);
}

#if defined(__AVX512F__)
// Float weight rows: 16 elements loaded and widened to fp32 at a time, and one converted alone.
struct elem_f32 {
    using T = float;
    static __m512 load(const float * p) { return _mm512_loadu_ps(p); }
    static float  one(float v) { return v; }
};
struct elem_f16 {
    using T = uint16_t;
    static __m512 load(const uint16_t * p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) p)); }
    static float  one(uint16_t v) { return fp16_to_fp32(v); }
};
struct elem_bf16 {
    using T = uint16_t;
    static __m512 load(const uint16_t * p) {
        const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    }
    static float one(uint16_t v) { return bf16_to_fp32(v); }
};

// Four independent accumulators of 16 lanes hide the FMA latency.
template <typename E>
float dot_float(int64_t n, const void * w, const float * x) {
    const typename E::T * v      = static_cast<const typename E::T *>(w);
    __m512                acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                     _mm512_setzero_ps() };
    int64_t               i      = 0;
    for (; i + 64 <= n; i += 64) {
        for (int k = 0; k < 4; ++k) {
            acc[k] = _mm512_fmadd_ps(E::load(v + i + 16 * k), _mm512_loadu_ps(x + i + 16 * k), acc[k]);
        }
    }
    for (; i + 16 <= n; i += 16) {
        acc[0] = _mm512_fmadd_ps(E::load(v + i), _mm512_loadu_ps(x + i), acc[0]);
    }
    float tail = 0.0f;
    for (; i < n; ++i) {
        tail += E::one(v[i]) * x[i];
    }
    const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    return _mm512_reduce_add_ps(s) + tail;
}
#endif

}  // namespace

vec_dot_q8_fn vec_dot_q8_simd(ggml_type type) {
    switch (type) {
        case ggml_type::Q4_0: return dot_q32<block_q4_0, false, false, 8>;
        case ggml_type::Q4_1: return dot_q32<block_q4_1, true, false, 0>;
        case ggml_type::Q5_0: return dot_q32<block_q5_0, false, true, 16>;
        case ggml_type::Q5_1: return dot_q32<block_q5_1, true, true, 0>;
        case ggml_type::Q8_0: return dot_q8_0;
        case ggml_type::Q4_K: return dot_q45_K<block_q4_K, false>;
        case ggml_type::Q5_K: return dot_q45_K<block_q5_K, true>;
        case ggml_type::Q6_K: return dot_q6_K;
        default: return nullptr;
    }
}

vec_dot_f32_fn vec_dot_f32_simd(ggml_type type) {
#if defined(__AVX512F__)
    switch (type) {
        case ggml_type::F32: return dot_float<elem_f32>;
        case ggml_type::F16: return dot_float<elem_f16>;
        case ggml_type::BF16: return dot_float<elem_bf16>;
        default: return nullptr;
    }
#else
    return nullptr;
#endif
}

}  // namespace tca

#else

namespace tca {

vec_dot_q8_fn vec_dot_q8_simd(ggml_type) { return nullptr; }
vec_dot_f32_fn vec_dot_f32_simd(ggml_type) { return nullptr; }

}  // namespace tca

#endif
