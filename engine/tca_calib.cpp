// TCA calibration statistics: see tca_calib.h.
//
// Queries are processed in chunks of n_chunk whole rows [n_chunk, L] (O(L) memory). A chunk holds its rows
// entirely, so each row's log-sum-exp is known before its probabilities are added to the column sums: the
// two passes of the spec (log-sum-exp, then column sums) run over the chunk's buffer and the logits are
// computed once. Keys are visited in tiles of the transposed K so that a tile stays in cache while every
// query of the chunk uses it, and the inner loops run over contiguous keys (they vectorise).
#include "tca_calib.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace tca {

static constexpr int64_t n_chunk = 16;   // queries per chunk
static constexpr int64_t n_tile  = 256;  // keys per tile

void tca_calib_head(const float * Q, const float * K, int64_t L, int n_head, int n_head_kv, int head_dim,
                    int h, double * col_mean, double * last) {
    const int kv      = h / (n_head / n_head_kv);
    const float scale = 1.0f / std::sqrt(float(head_dim));
    const int64_t d   = head_dim;

    // kt [head_dim, L]: this KV head's keys transposed; q [L, head_dim]: the head's queries, scaled
    std::vector<float> kt(size_t(d * L)), q(size_t(L * d));
    for (int64_t k = 0; k < L; k++) {
        for (int64_t j = 0; j < d; j++) {
            kt[j * L + k] = K[(k * n_head_kv + kv) * d + j];
            q[k * d + j]  = Q[(k * n_head + h) * d + j] * scale;
        }
    }

    std::vector<double> col(static_cast<size_t>(L), 0.0);
    std::vector<float> rows(size_t(n_chunk * L));  // [n_chunk, L] logits, then probabilities
    for (int64_t i0 = 0; i0 < L; i0 += n_chunk) {
        const int64_t i1 = std::min(L, i0 + n_chunk);
        for (int64_t i = i0; i < i1; i++) {
            std::fill_n(rows.data() + (i - i0) * L, i1, 0.0f);
        }
        // logits of keys [0, i1) (the chunk's last query sees them all), one tile of keys at a time so
        // that its kt columns stay in cache for every query of the chunk
        for (int64_t k0 = 0; k0 < i1; k0 += n_tile) {
            const int64_t k1 = std::min(i1, k0 + n_tile);
            for (int64_t i = i0; i < i1; i++) {
                float * row = rows.data() + (i - i0) * L;
                for (int64_t j = 0; j < d; j++) {
                    const float qj   = q[i * d + j];
                    const float * kj = kt.data() + j * L;
                    for (int64_t k = k0; k < k1; k++) {
                        row[k] += qj * kj[k];
                    }
                }
            }
        }
        for (int64_t i = i0; i < i1; i++) {
            float * row  = rows.data() + (i - i0) * L;
            float maxval = row[0];
            for (int64_t k = 1; k <= i; k++) {
                maxval = std::max(maxval, row[k]);
            }
            double sum = 0.0;
            for (int64_t k = 0; k <= i; k++) {
                row[k] = std::exp(row[k] - maxval);
                sum += row[k];
            }
            const double inv = 1.0 / sum;
            for (int64_t k = 0; k <= i; k++) {
                col[k] += row[k] * inv;
            }
            if (i == L - 1) {
                for (int64_t k = 0; k < L; k++) {
                    last[k] = row[k] * inv;
                }
            }
        }
    }
    for (int64_t k = 0; k < L; k++) {
        col_mean[k] = col[k] / double(L - k);
    }
}

static void check_finite(const float * x, int64_t n, const char * what) {
    for (int64_t i = 0; i < n; i++) {
        if (!std::isfinite(x[i])) {
            fail("tca-calibrate: %s has a non-finite value at flat index %lld", what, (long long)i);
        }
    }
}

void tca_calib_layer(const float * Q, const float * K, int64_t L, int n_head, int n_head_kv, int head_dim,
                     float * m, float * s, thread_pool & pool) {
    if (L < 1 || head_dim < 1 || n_head_kv < 1 || n_head < n_head_kv || n_head % n_head_kv != 0) {
        fail("tca-calibrate: bad attention shape: L = %lld, n_head = %d, n_head_kv = %d, head_dim = %d",
             (long long)L, n_head, n_head_kv, head_dim);
    }
    check_finite(Q, L * n_head * head_dim, "Q");
    check_finite(K, L * n_head_kv * head_dim, "K");
    // per query head: col_mean [n_head, L] and last [n_head, L]
    std::vector<double> col_mean(size_t(n_head * L)), last(size_t(n_head * L));
    pool.parallel_for(n_head, [&](int64_t h0, int64_t h1, int) {
        for (int64_t h = h0; h < h1; h++) {
            tca_calib_head(Q, K, L, n_head, n_head_kv, head_dim, int(h), &col_mean[h * L], &last[h * L]);
        }
    });
    const int n_group = n_head / n_head_kv;
    for (int kv = 0; kv < n_head_kv; kv++) {
        for (int64_t k = 0; k < L; k++) {
            double m_sum = 0.0, s_sum = 0.0;
            for (int g = 0; g < n_group; g++) {
                m_sum += col_mean[(kv * n_group + g) * L + k];
                s_sum += last[(kv * n_group + g) * L + k];
            }
            m[kv * L + k] = float(m_sum / n_group);
            s[kv * L + k] = float(s_sum / n_group);
        }
    }
}

}  // namespace tca
