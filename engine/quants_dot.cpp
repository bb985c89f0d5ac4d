// Activation quantization and the portable scalar dot products of every weight type with 8-bit
// activations. Integer sums are exact; each block's sum is scaled in fp32. The SIMD kernels in
// quants_dot_simd.cpp compute the same sums, grouped differently.
#include <cmath>

#include "common.h"
#include "fp16.h"
#include "quants.h"
#include "quants_simd.h"

namespace tca {

void quantize_row_q8_act(const float * x, int64_t n, int8_t * qs, float * d, float * s) {
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const float * xb = x + b * QK8_0;
        float amax       = 0.0f;
        for (int j = 0; j < QK8_0; ++j) {
            amax = std::fmax(amax, std::fabs(xb[j]));
        }
        const float db  = amax / 127.0f;
        const float idb = db != 0.0f ? 1.0f / db : 0.0f;
        int sum         = 0;
        for (int j = 0; j < QK8_0; ++j) {
            const int q       = int(std::nearbyint(xb[j] * idb));
            qs[b * QK8_0 + j] = int8_t(q);
            sum += q;
        }
        d[b] = db;
        s[b] = db * float(sum);
    }
}

namespace {

// sum_{j < n} u[j] * x[j] for weight codes u.
template <typename T>
int dot_codes(const T * u, const int8_t * x, int n) {
    int sum = 0;
    for (int j = 0; j < n; ++j) {
        sum += int(u[j]) * int(x[j]);
    }
    return sum;
}

// Unpacks the 32 nibble codes of a 32-block: element j in the low nibble of qs[j], j + 16 in the high.
void unpack_nibbles(const uint8_t * qs, uint8_t * u) {
    for (int j = 0; j < 16; ++j) {
        u[j]      = qs[j] & 0xF;
        u[j + 16] = qs[j] >> 4;
    }
}

void unpack_q5(const uint8_t * qs, const uint8_t * qh, uint8_t * u) {
    const uint32_t h = uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
    unpack_nibbles(qs, u);
    for (int j = 0; j < 32; ++j) {
        u[j] |= ((h >> j) & 1) << 4;
    }
}

float dot_q4_0(int64_t n, const void * w, const q8_act_row & x) {
    const block_q4_0 * b = static_cast<const block_q4_0 *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK4_0; ++i) {
        uint8_t u[32];
        unpack_nibbles(b[i].qs, u);
        const float d = fp16_to_fp32(b[i].d);
        // sum (u - 8) x = sum u x - 8 sum x
        y += d * (x.d[i] * float(dot_codes(u, x.qs + i * 32, 32)) - 8.0f * x.s[i]);
    }
    return y;
}

float dot_q4_1(int64_t n, const void * w, const q8_act_row & x) {
    const block_q4_1 * b = static_cast<const block_q4_1 *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK4_1; ++i) {
        uint8_t u[32];
        unpack_nibbles(b[i].qs, u);
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        y += d * x.d[i] * float(dot_codes(u, x.qs + i * 32, 32)) + m * x.s[i];
    }
    return y;
}

float dot_q5_0(int64_t n, const void * w, const q8_act_row & x) {
    const block_q5_0 * b = static_cast<const block_q5_0 *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK5_0; ++i) {
        uint8_t u[32];
        unpack_q5(b[i].qs, b[i].qh, u);
        const float d = fp16_to_fp32(b[i].d);
        y += d * (x.d[i] * float(dot_codes(u, x.qs + i * 32, 32)) - 16.0f * x.s[i]);
    }
    return y;
}

float dot_q5_1(int64_t n, const void * w, const q8_act_row & x) {
    const block_q5_1 * b = static_cast<const block_q5_1 *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK5_1; ++i) {
        uint8_t u[32];
        unpack_q5(b[i].qs, b[i].qh, u);
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        y += d * x.d[i] * float(dot_codes(u, x.qs + i * 32, 32)) + m * x.s[i];
    }
    return y;
}

float dot_q8_0(int64_t n, const void * w, const q8_act_row & x) {
    const block_q8_0 * b = static_cast<const block_q8_0 *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK8_0; ++i) {
        y += fp16_to_fp32(b[i].d) * x.d[i] * float(dot_codes(b[i].qs, x.qs + i * 32, 32));
    }
    return y;
}

// Q4_K and Q5_K: sum over sub-blocks j of d sc_j dx_j sum(u x) - dmin m_j s_j.
template <bool has_qh, typename block>
float dot_q45_K(int64_t n, const void * w, const q8_act_row & x) {
    const block * b = static_cast<const block *>(w);
    float y         = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d    = fp16_to_fp32(b[i].d);
        const float dmin = fp16_to_fp32(b[i].dmin);
        for (int j = 0; j < QK_K / 32; ++j) {
            uint8_t sc, m, u[32];
            q4_K_scale_min(j, b[i].scales, sc, m);
            const uint8_t * q = b[i].qs + 32 * (j / 2);
            for (int l = 0; l < 32; ++l) {
                u[l] = (j % 2 == 0) ? (q[l] & 0xF) : (q[l] >> 4);
            }
            if constexpr (has_qh) {
                for (int l = 0; l < 32; ++l) {
                    u[l] |= ((b[i].qh[l] >> j) & 1) << 4;
                }
            }
            const int64_t xb = i * 8 + j;
            y +=
                d * float(sc) * x.d[xb] * float(dot_codes(u, x.qs + xb * 32, 32)) - dmin * float(m) * x.s[xb];
        }
    }
    return y;
}

float dot_q6_K(int64_t n, const void * w, const q8_act_row & x) {
    const block_q6_K * b = static_cast<const block_q6_K *>(w);
    float y              = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        int8_t q[QK_K];  // the signed codes q - 32, in element order
        for (int h = 0; h < 2; ++h) {
            const uint8_t * ql = b[i].ql + 64 * h;
            const uint8_t * qh = b[i].qh + 32 * h;
            int8_t * o         = q + 128 * h;
            for (int l = 0; l < 32; ++l) {
                o[l]      = int8_t(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = int8_t(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        // 16 sub-blocks of 16, two per activation block of 32
        for (int j = 0; j < QK_K / 16; ++j) {
            const int64_t xb = i * 8 + j / 2;
            const int s      = dot_codes(q + 16 * j, x.qs + i * QK_K + 16 * j, 16);
            y += d * float(b[i].scales[j]) * x.d[xb] * float(s);
        }
    }
    return y;
}

float dot_f32(int64_t n, const void * w, const float * x) {
    const float * v = static_cast<const float *>(w);
    float y         = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        y += v[i] * x[i];
    }
    return y;
}

float dot_f16(int64_t n, const void * w, const float * x) {
    const uint16_t * v = static_cast<const uint16_t *>(w);
    float y            = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        y += fp16_to_fp32(v[i]) * x[i];
    }
    return y;
}

float dot_bf16(int64_t n, const void * w, const float * x) {
    const uint16_t * v = static_cast<const uint16_t *>(w);
    float y            = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        y += bf16_to_fp32(v[i]) * x[i];
    }
    return y;
}

}  // namespace

vec_dot_q8_fn vec_dot_q8_scalar(ggml_type type) {
    switch (type) {
        case ggml_type::Q4_0:
            return dot_q4_0;
        case ggml_type::Q4_1:
            return dot_q4_1;
        case ggml_type::Q5_0:
            return dot_q5_0;
        case ggml_type::Q5_1:
            return dot_q5_1;
        case ggml_type::Q8_0:
            return dot_q8_0;
        case ggml_type::Q4_K:
            return dot_q45_K<false, block_q4_K>;
        case ggml_type::Q5_K:
            return dot_q45_K<true, block_q5_K>;
        case ggml_type::Q6_K:
            return dot_q6_K;
        default:
            return nullptr;
    }
}

vec_dot_q8_fn vec_dot_q8_best(ggml_type type) {
    vec_dot_q8_fn f = vec_dot_q8_simd(type);
    return f != nullptr ? f : vec_dot_q8_scalar(type);
}

vec_dot_f32_fn vec_dot_f32_scalar(ggml_type type) {
    switch (type) {
        case ggml_type::F32:
            return dot_f32;
        case ggml_type::F16:
            return dot_f16;
        case ggml_type::BF16:
            return dot_bf16;
        default:
            return nullptr;
    }
}

vec_dot_f32_fn vec_dot_f32_best(ggml_type type) {
    vec_dot_f32_fn f = vec_dot_f32_simd(type);
    return f != nullptr ? f : vec_dot_f32_scalar(type);
}

}  // namespace tca
