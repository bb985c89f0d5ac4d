// SIMD dot products of weight rows with 8-bit activations (AVX2, with AVX-512 VNNI when the build has
// it) and of float rows with fp32 activations (AVX-512). Each 32-element weight block: decode its codes
// to 32 bytes and take the u8 x s8 dot product with the activation block into 8 int32 lanes; 8 blocks
// (a K-quant super-block's 8 sub-blocks) are reduced together so that one conversion and one FMA apply
// their 8 scale products. Zen 4 runs 512-bit integer ops as two 256-bit halves, so 256-bit vectors lose
// nothing there and keep the AVX2 fallback the same code.
#include "quants_simd.h"

#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "fp16.h"

namespace tca {

namespace {

// Lane j of the result = sum of the 8 lanes of p[j]: the integer dot products of 8 activation blocks,
// reduced together so that one conversion and one FMA apply their 8 scales.
inline __m256i sum_lanes8(const __m256i p[8]) {
    const __m256i s01 = _mm256_hadd_epi32(p[0], p[1]);
    const __m256i s23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i s45 = _mm256_hadd_epi32(p[4], p[5]);
    const __m256i s67 = _mm256_hadd_epi32(p[6], p[7]);
    // lanes: p0..p3 summed over their low 128 bits, then over their high 128 bits; same for p4..p7
    const __m256i lo = _mm256_hadd_epi32(s01, s23);
    const __m256i hi = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

// Integer dot product of one 32-block's codes with an activation block, in 8 int32 lanes: the codes
// u are unsigned (the offset or minimum is applied through the activation sums s), except for Q8_0.
inline __m256i block_dot(const block_q4_0 & b, __m256i xv) {
    return dot_u8s8(unpack_nibbles(b.qs), xv);
}
inline __m256i block_dot(const block_q4_1 & b, __m256i xv) {
    return dot_u8s8(unpack_nibbles(b.qs), xv);
}
inline __m256i block_dot(const block_q5_0 & b, __m256i xv) {
    return dot_u8s8(_mm256_or_si256(unpack_nibbles(b.qs), bit4_from_mask(load_u32(b.qh))), xv);
}
inline __m256i block_dot(const block_q5_1 & b, __m256i xv) {
    return dot_u8s8(_mm256_or_si256(unpack_nibbles(b.qs), bit4_from_mask(load_u32(b.qh))), xv);
}
inline __m256i block_dot(const block_q8_0 & b, __m256i xv) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)b.qs);
    // |q| as unsigned, the sign moved onto x: |q| <= 128, |x| <= 127
    return dot_u8s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
}

template <typename block>
float block_min(const block & b) {
    if constexpr (std::is_same_v<block, block_q4_1> || std::is_same_v<block, block_q5_1>) {
        return fp16_to_fp32(b.m);
    } else {
        return 0.0f;
    }
}

// The 32-block types: x = d (u - offset), or d u + m when has_min. Groups of 8 blocks share one
// conversion and FMA of their 8 scale products; a block's offset or minimum meets the activation sum s.
template <typename block, bool has_min, int offset>
float dot_q32(int64_t n, const void * w, const q8_act_row & x) {
    const block * b  = static_cast<const block *>(w);
    const int64_t nb = n / 32;
    __m256 acc       = _mm256_setzero_ps();
    __m256 acc_s     = _mm256_setzero_ps();  // sum of m s (has_min) or d s (offset)
    int64_t i        = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i p[8];
        for (int j = 0; j < 8; ++j) {
            p[j] = block_dot(b[i + j], load_x(x, i + j));
        }
        const __m256 d = _mm256_cvtph_ps(_mm_setr_epi16(b[i].d, b[i + 1].d, b[i + 2].d, b[i + 3].d,
                                                        b[i + 4].d, b[i + 5].d, b[i + 6].d, b[i + 7].d));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_lanes8(p)), _mm256_mul_ps(d, _mm256_loadu_ps(x.d + i)),
                              acc);
        if constexpr (has_min) {
            const __m256 m = _mm256_cvtph_ps(_mm_setr_epi16(b[i].m, b[i + 1].m, b[i + 2].m, b[i + 3].m,
                                                            b[i + 4].m, b[i + 5].m, b[i + 6].m, b[i + 7].m));
            acc_s          = _mm256_fmadd_ps(m, _mm256_loadu_ps(x.s + i), acc_s);
        } else if constexpr (offset != 0) {
            acc_s = _mm256_fmadd_ps(d, _mm256_loadu_ps(x.s + i), acc_s);
        }
    }
    float y = 0.0f, ys = 0.0f;
    for (; i < nb; ++i) {
        const __m256i p = block_dot(b[i], load_x(x, i));
        const float d   = fp16_to_fp32(b[i].d);
        y += d * x.d[i] * hsum(_mm256_cvtepi32_ps(p));
        ys += (has_min ? block_min(b[i]) : d) * x.s[i];
    }
    y += hsum(acc);
    ys += hsum(acc_s);
    return has_min ? y + ys : y - float(offset) * ys;
}

inline __m256 u8x8_to_ps(const uint8_t * p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

// Q4_K / Q5_K: sum over sub-blocks j of d sc_j dx_j sum(u x) - dmin m_j s_j; sub-block j of a block
// lines up with activation block 8 i + j.
template <typename block, bool has_qh>
float dot_q45_K(int64_t n, const void * w, const q8_act_row & x) {
    const block * b  = static_cast<const block *>(w);
    __m256 acc       = _mm256_setzero_ps();
    __m256 acc_m     = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int64_t xb = i * 8;
        uint8_t sc[8], m[8];
        unpack_scales_k4(b[i].scales, sc, m);
        __m256i hbits;
        if constexpr (has_qh) {
            hbits = _mm256_loadu_si256((const __m256i *)b[i].qh);
        }
        __m256i p[8];
        for (int k = 0; k < 4; ++k) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * k));
            __m256i u0        = _mm256_and_si256(raw, m4);
            __m256i u1        = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if constexpr (has_qh) {
                // bit 2k of qh[l] is bit 4 of u0[l], bit 2k + 1 that of u1[l]
                u0 = _mm256_or_si256(u0, bit4_from_bytes(hbits, 2 * k));
                u1 = _mm256_or_si256(u1, bit4_from_bytes(hbits, 2 * k + 1));
            }
            p[2 * k]     = dot_u8s8(u0, load_x(x, xb + 2 * k));
            p[2 * k + 1] = dot_u8s8(u1, load_x(x, xb + 2 * k + 1));
        }
        const __m256 d  = _mm256_set1_ps(fp16_to_fp32(b[i].d));
        const __m256 ds = _mm256_mul_ps(_mm256_mul_ps(d, u8x8_to_ps(sc)), _mm256_loadu_ps(x.d + xb));
        acc             = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_lanes8(p)), ds, acc);
        const __m256 dm = _mm256_mul_ps(_mm256_set1_ps(fp16_to_fp32(b[i].dmin)), u8x8_to_ps(m));
        acc_m           = _mm256_fmadd_ps(dm, _mm256_loadu_ps(x.s + xb), acc_m);
    }
    return hsum(_mm256_sub_ps(acc, acc_m));
}

// Q6_K: per activation block of 32, two sub-blocks of 16 with their own int8 scales. maddubs gives
// int16 pair sums (|.| <= 63 * 127 * 2), minus those of 32 x for the code offset, then madd with the
// scales (lanes 0-7 cover the first 16 elements) gives 8 int32 lanes per activation block.
float dot_q6_K(int64_t n, const void * w, const q8_act_row & x) {
    const block_q6_K * b = static_cast<const block_q6_K *>(w);
    __m256 acc           = _mm256_setzero_ps();
    const __m256i c32    = _mm256_set1_epi8(32);
    const __m128i pat    = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int64_t xb = i * 8;
        const __m128i sc = _mm_loadu_si128((const __m128i *)b[i].scales);
        __m256i p[8];
        for (int h = 0; h < 2; ++h) {
            __m256i u[4];
            q6_K_codes(b[i], h, u);
            for (int k = 0; k < 4; ++k) {
                const int j      = 8 * h + 2 * k;  // scales j, j + 1
                const __m256i xv = load_x(x, xb + 4 * h + k);
                const __m256i s16 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(u[k], xv), _mm256_maddubs_epi16(c32, xv));
                const __m256i scv =
                    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, _mm_add_epi8(pat, _mm_set1_epi8(char(j)))));
                p[4 * h + k] = _mm256_madd_epi16(s16, scv);
            }
        }
        const __m256 ds = _mm256_mul_ps(_mm256_set1_ps(fp16_to_fp32(b[i].d)), _mm256_loadu_ps(x.d + xb));
        acc             = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_lanes8(p)), ds, acc);
    }
    return hsum(acc);
}

#if defined(__AVX512F__)
// Float weight rows: 16 elements loaded and widened to fp32 at a time, and one converted alone.
struct elem_f32 {
    using T = float;
    static __m512 load(const float * p) { return _mm512_loadu_ps(p); }
    static float one(float v) { return v; }
};
struct elem_f16 {
    using T = uint16_t;
    static __m512 load(const uint16_t * p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
    static float one(uint16_t v) { return fp16_to_fp32(v); }
};
struct elem_bf16 {
    using T = uint16_t;
    static __m512 load(const uint16_t * p) {
        const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    }
    static float one(uint16_t v) { return bf16_to_fp32(v); }
};

// Four independent accumulators of 16 lanes hide the FMA latency.
template <typename E>
float dot_float(int64_t n, const void * w, const float * x) {
    const typename E::T * v = static_cast<const typename E::T *>(w);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t i     = 0;
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
        case ggml_type::Q4_0:
            return dot_q32<block_q4_0, false, 8>;
        case ggml_type::Q4_1:
            return dot_q32<block_q4_1, true, 0>;
        case ggml_type::Q5_0:
            return dot_q32<block_q5_0, false, 16>;
        case ggml_type::Q5_1:
            return dot_q32<block_q5_1, true, 0>;
        case ggml_type::Q8_0:
            return dot_q32<block_q8_0, false, 0>;
        case ggml_type::Q4_K:
            return dot_q45_K<block_q4_K, false>;
        case ggml_type::Q5_K:
            return dot_q45_K<block_q5_K, true>;
        case ggml_type::Q6_K:
            return dot_q6_K;
        default:
            return nullptr;
    }
}

vec_dot_f32_fn vec_dot_f32_simd(ggml_type type) {
#if defined(__AVX512F__)
    switch (type) {
        case ggml_type::F32:
            return dot_float<elem_f32>;
        case ggml_type::F16:
            return dot_float<elem_f16>;
        case ggml_type::BF16:
            return dot_float<elem_bf16>;
        default:
            return nullptr;
    }
#else
    return nullptr;
#endif
}

}  // namespace tca

#else

namespace tca {

vec_dot_q8_fn vec_dot_q8_simd(ggml_type) {
    return nullptr;
}
vec_dot_f32_fn vec_dot_f32_simd(ggml_type) {
    return nullptr;
}

}  // namespace tca

#endif
