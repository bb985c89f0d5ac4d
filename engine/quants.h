// Weight formats of GGUF/ggml: block layouts, dequantization, and the 8-bit activation format with the
// per-type dot products used by the matrix-vector path (engine/matmul.h).
#pragma once

#include <cstdint>

#include "ggml_types.h"

namespace tca {

// Block layouts (facts of the ggml format). Every fp16 field is stored as its raw bits.
constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

struct block_q4_0 {  // x = d * (q - 8)
    uint16_t d;
    uint8_t qs[QK4_0 / 2];  // element j in the low nibble of qs[j], element j + 16 in the high nibble
};
struct block_q4_1 {  // x = d * q + m
    uint16_t d, m;
    uint8_t qs[QK4_1 / 2];
};
struct block_q5_0 {  // x = d * (q - 16); bit j of qh is bit 4 of element j
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
};
struct block_q5_1 {  // x = d * q + m
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
};
struct block_q8_0 {  // x = d * q
    uint16_t d;
    int8_t qs[QK8_0];
};
struct block_q4_K {  // 8 sub-blocks of 32: x = d * sc[j] * q - dmin * m[j], (sc, m) 6-bit packed in scales
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];  // sub-blocks 2k, 2k+1 in the low / high nibbles of qs[32k .. 32k+31]
};
struct block_q5_K {  // as Q4_K with a fifth bit: bit j of qh[l] is bit 4 of element l of sub-block j
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct block_q6_K {  // 16 sub-blocks of 16: x = d * scales[j] * (q - 32)
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};

static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 &&
                  sizeof(block_q5_1) == 24 && sizeof(block_q8_0) == 34,
              "ggml block sizes");
static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210,
              "ggml k-quant block sizes");

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K block.
inline void q4_K_scale_min(int j, const uint8_t * scales, uint8_t & sc, uint8_t & m) {
    if (j < 4) {
        sc = scales[j] & 63;
        m  = scales[j + 4] & 63;
    } else {
        sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
        m  = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

// dst[0, n) = src decoded; n must be a multiple of the type's block size. Throws for types the engine
// cannot compute with.
void dequantize_row(ggml_type type, const void * src, float * dst, int64_t n);

// The same with the portable scalar loops only (the reference for the SIMD ones).
void dequantize_row_scalar(ggml_type type, const void * src, float * dst, int64_t n);

// Bytes of a row of n elements (n a multiple of the block size).
size_t row_size(ggml_type type, int64_t n);

// An activation row quantized to 8 bits in blocks of 32 (QK8_0): x[i] ~= d[b] * qs[i] with b = i / 32,
// d[b] = max|x in block| / 127 and round to nearest, so |x[i] - d[b] * qs[i]| <= d[b] / 2.
// s[b] = d[b] * sum of qs in block b: the weight types with an offset (Q4_1, Q5_1, K-quant minimums)
// and the unsigned-code types (Q4_0, Q5_0, Q6_K) need it.
struct q8_act_row {
    const int8_t * qs;  // [n]
    const float * d;    // [n / 32]
    const float * s;    // [n / 32]
};

// Quantizes x[0, n) (n % 32 == 0) into qs [n], d [n / 32], s [n / 32].
void quantize_row_q8_act(const float * x, int64_t n, int8_t * qs, float * d, float * s);

// Dot product of one weight row of n elements with a quantized activation row.
using vec_dot_q8_fn = float (*)(int64_t n, const void * w_row, const q8_act_row & x);

// The portable scalar kernel of a quantized type (always compiled; the reference for the SIMD ones),
// and the fastest one this build has. nullptr for the float types (F32, F16, BF16), which do not take
// quantized activations.
vec_dot_q8_fn vec_dot_q8_scalar(ggml_type type);
vec_dot_q8_fn vec_dot_q8_best(ggml_type type);

// Dot product of one float-type (F32, F16, BF16) weight row with an fp32 activation row.
using vec_dot_f32_fn = float (*)(int64_t n, const void * w_row, const float * x);
vec_dot_f32_fn vec_dot_f32_scalar(ggml_type type);
vec_dot_f32_fn vec_dot_f32_best(ggml_type type);

}  // namespace tca
