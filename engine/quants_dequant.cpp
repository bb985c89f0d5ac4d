// Dequantization of weight rows, one plain loop per type. The order of operations matches gguf-py's
// dequantize (a product, then the offset) so results agree to fp32 rounding.
#include "common.h"
#include "fp16.h"
#include "quants.h"
#include "quants_simd.h"

namespace tca {

namespace {

void dequant_q4_0(const block_q4_0 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j]             = d * float((b[i].qs[j] & 0xF) - 8);
            y[j + QK4_0 / 2] = d * float((b[i].qs[j] >> 4) - 8);
        }
    }
}

void dequant_q4_1(const block_q4_1 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_1) {
        const float d = fp16_to_fp32(b[i].d);
        const float m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j]             = d * float(b[i].qs[j] & 0xF) + m;
            y[j + QK4_1 / 2] = d * float(b[i].qs[j] >> 4) + m;
        }
    }
}

uint32_t load_u32(const uint8_t * p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

void dequant_q5_0(const block_q5_0 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_0) {
        const float d     = fp16_to_fp32(b[i].d);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int lo     = (b[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi     = (b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j]             = d * float(lo - 16);
            y[j + QK5_0 / 2] = d * float(hi - 16);
        }
    }
}

void dequant_q5_1(const block_q5_1 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_1) {
        const float d     = fp16_to_fp32(b[i].d);
        const float m     = fp16_to_fp32(b[i].m);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int lo     = (b[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4);
            const int hi     = (b[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j]             = d * float(lo) + m;
            y[j + QK5_1 / 2] = d * float(hi) + m;
        }
    }
}

void dequant_q8_0(const block_q8_0 * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK8_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK8_0; ++j) {
            y[j] = d * float(b[i].qs[j]);
        }
    }
}

void dequant_q4_K(const block_q4_K * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d     = fp16_to_fp32(b[i].d);
        const float dmin  = fp16_to_fp32(b[i].dmin);
        const uint8_t * q = b[i].qs;
        for (int j = 0; j < QK_K / 32; j += 2, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            q4_K_scale_min(j, b[i].scales, sc0, m0);
            q4_K_scale_min(j + 1, b[i].scales, sc1, m1);
            const float d0 = d * float(sc0), dm0 = dmin * float(m0);
            const float d1 = d * float(sc1), dm1 = dmin * float(m1);
            for (int l = 0; l < 32; ++l) {
                *y++ = d0 * float(q[l] & 0xF) - dm0;
            }
            for (int l = 0; l < 32; ++l) {
                *y++ = d1 * float(q[l] >> 4) - dm1;
            }
        }
    }
}

void dequant_q5_K(const block_q5_K * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d     = fp16_to_fp32(b[i].d);
        const float dmin  = fp16_to_fp32(b[i].dmin);
        const uint8_t * q = b[i].qs;
        for (int j = 0; j < QK_K / 32; j += 2, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            q4_K_scale_min(j, b[i].scales, sc0, m0);
            q4_K_scale_min(j + 1, b[i].scales, sc1, m1);
            const float d0 = d * float(sc0), dm0 = dmin * float(m0);
            const float d1 = d * float(sc1), dm1 = dmin * float(m1);
            for (int l = 0; l < 32; ++l) {
                *y++ = d0 * float((q[l] & 0xF) | (((b[i].qh[l] >> j) & 1) << 4)) - dm0;
            }
            for (int l = 0; l < 32; ++l) {
                *y++ = d1 * float((q[l] >> 4) | (((b[i].qh[l] >> (j + 1)) & 1) << 4)) - dm1;
            }
        }
    }
}

void dequant_q6_K(const block_q6_K * b, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d      = fp16_to_fp32(b[i].d);
        const uint8_t * ql = b[i].ql;
        const uint8_t * qh = b[i].qh;
        const int8_t * sc  = b[i].scales;
        // Two halves of 128: element l + 32 k of a half takes its low 4 bits from ql (low nibbles of
        // ql[0..63] for k = 0, 1, high nibbles for k = 2, 3) and its top 2 bits from qh[l] >> 2k.
        for (int h = 0; h < 2; ++h, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int q0 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q1 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                const int is = l / 16;
                y[l]         = d * float(sc[is + 0]) * float(q0);
                y[l + 32]    = d * float(sc[is + 2]) * float(q1);
                y[l + 64]    = d * float(sc[is + 4]) * float(q2);
                y[l + 96]    = d * float(sc[is + 6]) * float(q3);
            }
        }
    }
}

}  // namespace

size_t row_size(ggml_type type, int64_t n) {
    const ggml_type_traits & t = ggml_traits(type);
    return size_t(n / t.block_size) * t.type_size;
}

namespace {

void check_row_length(ggml_type type, int64_t n) {
    const ggml_type_traits & t = ggml_traits(type);
    if (n % t.block_size != 0) {
        fail("dequantize_row: %lld elements is not a multiple of the %s block size %lld", (long long)n,
             t.name, (long long)t.block_size);
    }
}

}  // namespace

void dequantize_row(ggml_type type, const void * src, float * dst, int64_t n) {
    check_row_length(type, n);
    if (!dequantize_row_simd(type, src, dst, n)) {
        dequantize_row_scalar(type, src, dst, n);
    }
}

void dequantize_row_scalar(ggml_type type, const void * src, float * dst, int64_t n) {
    check_row_length(type, n);
    const ggml_type_traits & t = ggml_traits(type);
    const int64_t nb           = n / t.block_size;
    switch (type) {
        case ggml_type::F32:
            for (int64_t i = 0; i < n; ++i) {
                dst[i] = static_cast<const float *>(src)[i];
            }
            return;
        case ggml_type::F16:
            fp16_to_fp32_row(static_cast<const uint16_t *>(src), dst, n);
            return;
        case ggml_type::BF16:
            bf16_to_fp32_row(static_cast<const uint16_t *>(src), dst, n);
            return;
        case ggml_type::Q4_0:
            dequant_q4_0(static_cast<const block_q4_0 *>(src), dst, nb);
            return;
        case ggml_type::Q4_1:
            dequant_q4_1(static_cast<const block_q4_1 *>(src), dst, nb);
            return;
        case ggml_type::Q5_0:
            dequant_q5_0(static_cast<const block_q5_0 *>(src), dst, nb);
            return;
        case ggml_type::Q5_1:
            dequant_q5_1(static_cast<const block_q5_1 *>(src), dst, nb);
            return;
        case ggml_type::Q8_0:
            dequant_q8_0(static_cast<const block_q8_0 *>(src), dst, nb);
            return;
        case ggml_type::Q4_K:
            dequant_q4_K(static_cast<const block_q4_K *>(src), dst, nb);
            return;
        case ggml_type::Q5_K:
            dequant_q5_K(static_cast<const block_q5_K *>(src), dst, nb);
            return;
        case ggml_type::Q6_K:
            dequant_q6_K(static_cast<const block_q6_K *>(src), dst, nb);
            return;
        default:
            fail("dequantize_row: tensor type %s is not supported", t.name);
    }
}

}  // namespace tca
