#include "ops.h"

#include <cmath>

#include "vec.h"

namespace tca {

void op_rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols, float * out,
                 thread_pool & pool) {
    pool.parallel_for(n_rows, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
            const float * xr = x + r * n_cols;
            float *       yr = out + r * n_cols;
            const float   ss = vec_dot(xr, xr, n_cols);
            const float   s  = 1.0f / std::sqrt(ss / float(n_cols) + eps);
            for (int64_t c = 0; c < n_cols; ++c) {
                yr[c] = xr[c] * s * g[c];
            }
        }
    });
}

void op_add_bias(float * y, const float * b, int64_t n_rows, int64_t n_cols) {
    for (int64_t r = 0; r < n_rows; ++r) {
        vec_axpy(y + r * n_cols, b, 1.0f, n_cols);
    }
}

void op_add(float * x, const float * y, int64_t n) {
    vec_axpy(x, y, 1.0f, n);
}

void op_swiglu(float * gate, const float * up, int64_t n, thread_pool & pool) {
    pool.parallel_for(n, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
            const float g = gate[i];
            gate[i]       = g / (1.0f + std::exp(-g)) * up[i];
        }
    });
}

void rope_table_init(rope_table & t, const int32_t * pos, int64_t n_tok, int n_rot, float base, float scale,
                     const float * freq_factors) {
    const int half = n_rot / 2;
    t.n_tok        = n_tok;
    t.n_rot        = n_rot;
    t.cos.resize(size_t(n_tok) * half);
    t.sin.resize(size_t(n_tok) * half);
    for (int i = 0; i < half; ++i) {
        double inv_freq = std::pow(double(base), -2.0 * i / n_rot) * scale;
        if (freq_factors != nullptr) {
            inv_freq /= freq_factors[i];
        }
        for (int64_t r = 0; r < n_tok; ++r) {
            const double a                = double(pos[r]) * inv_freq;
            t.cos[size_t(r) * half + i] = float(std::cos(a));
            t.sin[size_t(r) * half + i] = float(std::sin(a));
        }
    }
}

void op_rope(float * x, int64_t n_tok, int n_head, int head_dim, const rope_table & t, bool adjacent) {
    const int half = t.n_rot / 2;
    for (int64_t r = 0; r < n_tok; ++r) {
        const float * c = &t.cos[size_t(r) * half];
        const float * s = &t.sin[size_t(r) * half];
        for (int h = 0; h < n_head; ++h) {
            float * v = x + (r * n_head + h) * head_dim;
            for (int i = 0; i < half; ++i) {
                const int   i0 = adjacent ? 2 * i : i;
                const int   i1 = adjacent ? 2 * i + 1 : i + half;
                const float a  = v[i0];
                const float b  = v[i1];
                v[i0]          = a * c[i] - b * s[i];
                v[i1]          = a * s[i] + b * c[i];
            }
        }
    }
}

}  // namespace tca
