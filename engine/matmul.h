// Matrix products of a weight matrix in any computable ggml type with fp32 activations, and embedding
// lookup. Two paths, chosen per call:
//  - few tokens (generation): each activation row is quantized to 8-bit blocks of 32 (quants.h) and
//    every weight row is read once and dotted with them by integer SIMD kernels (float weights: fp32
//    dot, no quantization);
//  - many tokens (prompt processing): panels of 32 weight rows are dequantized to fp32 once and
//    multiplied with tiles of 8 tokens by an FMA micro-kernel; no activation quantization.
// Error of y[t, o] against the exact product of the dequantized weight with x: at most
// 2 n_in u sum_i |w x| (fp32 rounding, u = 2^-24) on both paths, plus on the 8-bit path the activation
// rounding, sum over blocks b of (d_b / 2) sum_{i in b} |w[o, i]| with d_b = max|x in b| / 127 (a few
// tenths of a percent of sum |w x| for typical rows). tests/test_quants.py checks exactly this bound.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ggml_types.h"
#include "quants.h"
#include "thread_pool.h"

namespace tca {

struct weight {  // a 2-D weight matrix [n_out, n_in] in ggml layout (or a 1-D vector)
    ggml_type type;
    int64_t n_in;   // ne[0], the fastest dimension
    int64_t n_out;  // rows
    const void * data;
    size_t row_bytes() const;
};

// Which kernels matmul uses: the fastest this build has, or only the portable scalar ones (the
// 8-bit path for every n_tok; used by tests to check both).
enum class matmul_kernels { best, scalar };

// y[t, o] = sum_i w[o, i] * x[t, i];  x [n_tok, n_in], y [n_tok, n_out]
void matmul(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool);
void matmul(const weight & w, const float * x, int64_t n_tok, float * y, thread_pool & pool,
            matmul_kernels kernels);

// out[t, :] = row ids[t] of w, dequantized; out [n, n_in]. Throws for an id outside [0, n_out).
void get_rows(const weight & w, const int32_t * ids, int64_t n, float * out);

// GFLOP/s of fp32 FMAs on independent register chains, on every thread of the pool at once: the
// compute ceiling that kernel benchmarks report against.
double fma_peak_gflops(thread_pool & pool);

// Smallest n_tok for which matmul (best kernels) takes the dequantize-and-FMA path.
constexpr int64_t k_matmul_gemm_min_tokens = 16;

}  // namespace tca
