#include "matmul.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "common.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace tca {

namespace {

constexpr int k_panel_rows  = 32;  // weight rows per dequantized panel: two 16-lane vectors
constexpr int k_tile_tokens = 8;   // tokens per micro-kernel tile: 2 x 8 accumulator vectors

// what: the calling function, for the message.
void check_weight(const weight & w, const char * what) {
    const ggml_type_traits * t = ggml_type_traits_get(uint32_t(w.type));
    if (t == nullptr || !t->computable) {
        fail("%s: tensor type %s is not supported", what, t != nullptr ? t->name : "(unknown)");
    }
    if (w.n_in <= 0 || w.n_out <= 0 || w.n_in % t->block_size != 0) {
        fail("%s: bad %s weight shape [%lld, %lld] (n_in must be a positive multiple of %lld)", what, t->name,
             (long long)w.n_out, (long long)w.n_in, (long long)t->block_size);
    }
    if (w.data == nullptr) {
        fail("%s: %s weight has no data", what, t->name);
    }
}

bool is_float_type(ggml_type type) {
    return type == ggml_type::F32 || type == ggml_type::F16 || type == ggml_type::BF16;
}

// Few tokens, float weights: fp32 dot of every weight row with every token.
void matmul_vec_float(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool,
                      vec_dot_f32_fn dot) {
    const size_t rb = w.row_bytes();
    pool.parallel_for(w.n_out, [&](int64_t o0, int64_t o1, int) {
        for (int64_t o = o0; o < o1; ++o) {
            const uint8_t * row = static_cast<const uint8_t *>(w.data) + o * rb;
            for (int64_t t = 0; t < n_tok; ++t) {
                y[t * w.n_out + o] = dot(w.n_in, row, x + t * w.n_in);
            }
        }
    });
}

// Few tokens, quantized weights: quantize each token row to 8-bit blocks, then integer dots.
void matmul_vec_q8(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool,
                   vec_dot_q8_fn dot) {
    const int64_t nb = w.n_in / QK8_0;
    std::vector<int8_t> qs(size_t(n_tok * w.n_in));
    std::vector<float> d(size_t(n_tok * nb)), s(size_t(n_tok * nb));
    for (int64_t t = 0; t < n_tok; ++t) {
        quantize_row_q8_act(x + t * w.n_in, w.n_in, qs.data() + t * w.n_in, d.data() + t * nb,
                            s.data() + t * nb);
    }
    const size_t rb = w.row_bytes();
    pool.parallel_for(w.n_out, [&](int64_t o0, int64_t o1, int) {
        for (int64_t o = o0; o < o1; ++o) {
            const uint8_t * row = static_cast<const uint8_t *>(w.data) + o * rb;
            for (int64_t t = 0; t < n_tok; ++t) {
                const q8_act_row xt{qs.data() + t * w.n_in, d.data() + t * nb, s.data() + t * nb};
                y[t * w.n_out + o] = dot(w.n_in, row, xt);
            }
        }
    });
}

// One tile: y[j, r] = sum_k wp[k, r] * xp[k, j] for r < n_rows, j < n_toks.
// wp [n_in, 32] (a transposed panel), xp [n_in, 8] (a transposed token tile), y row stride ldy.
void gemm_tile(int64_t n_in, const float * wp, const float * xp, float * y, int64_t ldy, int n_rows,
               int n_toks) {
#if defined(__AVX512F__)
    __m512 c[k_tile_tokens][2];
    for (int j = 0; j < k_tile_tokens; ++j) {
        c[j][0] = _mm512_setzero_ps();
        c[j][1] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < n_in; ++k) {
        const __m512 w0 = _mm512_loadu_ps(wp + k * k_panel_rows);
        const __m512 w1 = _mm512_loadu_ps(wp + k * k_panel_rows + 16);
        for (int j = 0; j < k_tile_tokens; ++j) {
            const __m512 b = _mm512_set1_ps(xp[k * k_tile_tokens + j]);
            c[j][0]        = _mm512_fmadd_ps(w0, b, c[j][0]);
            c[j][1]        = _mm512_fmadd_ps(w1, b, c[j][1]);
        }
    }
    const __mmask16 m0 = n_rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n_rows) - 1);
    const __mmask16 m1 = n_rows >= 32 ? __mmask16(0xFFFF) : __mmask16((1u << std::max(n_rows - 16, 0)) - 1);
    for (int j = 0; j < n_toks; ++j) {
        _mm512_mask_storeu_ps(y + j * ldy, m0, c[j][0]);
        _mm512_mask_storeu_ps(y + j * ldy + 16, m1, c[j][1]);
    }
#else
    float c[k_tile_tokens][k_panel_rows] = {};
    for (int64_t k = 0; k < n_in; ++k) {
        for (int j = 0; j < k_tile_tokens; ++j) {
            const float b = xp[k * k_tile_tokens + j];
            for (int r = 0; r < k_panel_rows; ++r) {
                c[j][r] += wp[k * k_panel_rows + r] * b;
            }
        }
    }
    for (int j = 0; j < n_toks; ++j) {
        for (int r = 0; r < n_rows; ++r) {
            y[j * ldy + r] = c[j][r];
        }
    }
#endif
}

#if defined(__AVX512F__)
// Transposes 16 vectors of 16 floats in place: r[i] lane j <-> r[j] lane i.
inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved: lane L holds columns 4L..4L+3
        t[2 * i]     = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    __m512 u[16];  // u[4g + j], 128-bit lane L: column 4L + j of rows 4g..4g+3
    for (int g = 0; g < 4; ++g) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; ++j) {  // a 4 x 4 transpose of 128-bit lanes across u[j], u[4 + j], ...
        const __m512 p = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88),
                     q = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        const __m512 v = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
        const __m512 w = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        r[j]           = _mm512_shuffle_f32x4(p, v, 0x88);
        r[4 + j]       = _mm512_shuffle_f32x4(q, w, 0x88);
        r[8 + j]       = _mm512_shuffle_f32x4(p, v, 0xDD);
        r[12 + j]      = _mm512_shuffle_f32x4(q, w, 0xDD);
    }
}
#endif

// wp [n_in, 32] = transpose of rows [32, n_in].
void transpose_panel(const float * rows, int64_t n_in, float * wp) {
    int64_t k0 = 0;
#if defined(__AVX512F__)
    for (; k0 + 16 <= n_in; k0 += 16) {
        for (int h = 0; h < k_panel_rows / 16; ++h) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) {
                r[i] = _mm512_loadu_ps(rows + (16 * h + i) * n_in + k0);
            }
            transpose16(r);
            for (int i = 0; i < 16; ++i) {
                _mm512_storeu_ps(wp + (k0 + i) * k_panel_rows + 16 * h, r[i]);
            }
        }
    }
#endif
    for (int64_t k = k0; k < n_in; ++k) {
        for (int r = 0; r < k_panel_rows; ++r) {
            wp[k * k_panel_rows + r] = rows[r * n_in + k];
        }
    }
}

// Many tokens: each thread dequantizes panels of 32 weight rows into a transposed fp32 panel once
// and runs every token tile against it.
void matmul_gemm(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool) {
    const int64_t n_in    = w.n_in;
    const int64_t n_tiles = (n_tok + k_tile_tokens - 1) / k_tile_tokens;
    // xp [n_tiles, n_in, 8]: token tiles transposed, the tokens past n_tok zero
    std::vector<float> xp(size_t(n_tiles * n_in * k_tile_tokens), 0.0f);
    pool.parallel_for(n_tiles, [&](int64_t t0, int64_t t1, int) {
        for (int64_t tile = t0; tile < t1; ++tile) {
            float * dst      = xp.data() + tile * n_in * k_tile_tokens;
            const int64_t nt = std::min<int64_t>(k_tile_tokens, n_tok - tile * k_tile_tokens);
            for (int64_t j = 0; j < nt; ++j) {
                const float * src = x + (tile * k_tile_tokens + j) * n_in;
                for (int64_t k = 0; k < n_in; ++k) {
                    dst[k * k_tile_tokens + j] = src[k];
                }
            }
        }
    });
    const size_t rb        = w.row_bytes();
    const int64_t n_panels = (w.n_out + k_panel_rows - 1) / k_panel_rows;
    pool.parallel_for(n_panels, [&](int64_t p0, int64_t p1, int) {
        std::vector<float> rows(size_t(k_panel_rows * n_in));  // [32, n_in]
        std::vector<float> wp(size_t(n_in * k_panel_rows));    // [n_in, 32]
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t o0 = p * k_panel_rows;
            const int n_rows = int(std::min<int64_t>(k_panel_rows, w.n_out - o0));
            for (int r = 0; r < n_rows; ++r) {
                dequantize_row(w.type, static_cast<const uint8_t *>(w.data) + (o0 + r) * rb,
                               rows.data() + r * n_in, n_in);
            }
            std::fill(rows.begin() + n_rows * n_in, rows.end(), 0.0f);
            transpose_panel(rows.data(), n_in, wp.data());
            for (int64_t tile = 0; tile < n_tiles; ++tile) {
                const int64_t t0 = tile * k_tile_tokens;
                const int nt     = int(std::min<int64_t>(k_tile_tokens, n_tok - t0));
                gemm_tile(n_in, wp.data(), xp.data() + tile * n_in * k_tile_tokens, y + t0 * w.n_out + o0,
                          w.n_out, n_rows, nt);
            }
        }
    });
}

}  // namespace

size_t weight::row_bytes() const {
    return row_size(type, n_in);
}

void matmul(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool) {
    matmul(w, x, n_tok, y, pool, matmul_kernels::best);
}

void matmul(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool,
            matmul_kernels kernels) {
    check_weight(w, "matmul");
    if (n_tok <= 0) {
        return;
    }
    const bool best = kernels == matmul_kernels::best;
    if (best && n_tok >= k_matmul_gemm_min_tokens) {
        matmul_gemm(w, x, n_tok, y, pool);
    } else if (is_float_type(w.type)) {
        matmul_vec_float(w, x, n_tok, y, pool, best ? vec_dot_f32_best(w.type) : vec_dot_f32_scalar(w.type));
    } else {
        matmul_vec_q8(w, x, n_tok, y, pool, best ? vec_dot_q8_best(w.type) : vec_dot_q8_scalar(w.type));
    }
}

void get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) {
    check_weight(w, "get_rows");
    const size_t rb = w.row_bytes();
    for (int64_t t = 0; t < n; ++t) {
        if (ids[t] < 0 || ids[t] >= w.n_out) {
            fail("get_rows: row id %d at position %lld is outside [0, %lld)", ids[t], (long long)t,
                 (long long)w.n_out);
        }
        dequantize_row(w.type, static_cast<const uint8_t *>(w.data) + ids[t] * rb, out + t * w.n_in, w.n_in);
    }
}

double fma_peak_gflops(thread_pool & pool) {
    const int n_threads    = pool.size();
    constexpr int n_chains = 16, n_lanes = 16;  // enough independent chains to cover FMA latency
    constexpr int64_t n_iter = int64_t(1) << 17;
    std::vector<float> sink(size_t(n_threads * n_lanes));
    double best = 0.0;
    // The best of several short runs: on a shared machine, the runs that were not preempted.
    for (int trial = 0; trial < 10; ++trial) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(n_threads, [&](int64_t, int64_t, int index) {
            typedef float v16 __attribute__((vector_size(64)));
            v16 acc[n_chains];
            for (int c = 0; c < n_chains; ++c) {
                acc[c] = v16{} + float(index + c);
            }
            const v16 a = v16{} + 0.999999f, b = v16{} + 1e-7f;
            for (int64_t i = 0; i < n_iter; ++i) {
                for (int c = 0; c < n_chains; ++c) {
                    acc[c] = acc[c] * a + b;
                }
            }
            for (int c = 1; c < n_chains; ++c) {
                acc[0] += acc[c];
            }
            for (int l = 0; l < n_lanes; ++l) {
                sink[size_t(index * n_lanes + l)] = acc[0][l];
            }
        });
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, 2.0 * n_chains * n_lanes * double(n_iter) * n_threads / seconds / 1e9);
    }
    return best;
}

}  // namespace tca
