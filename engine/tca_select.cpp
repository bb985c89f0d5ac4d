// TCA token selection: see tca_select.h. Every floating-point step matches python/tca/tca_reference.py;
// this file is compiled with -ffp-contract=off (CMakeLists.txt) so that no a * b + c is fused into an FMA
// the reference does not do: a one-ulp difference in a block score could reorder two nearly tied blocks.
#include "tca_select.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>

#include "common.h"

namespace tca {

void tca_params_check(int b, int w, float alpha) {
    tca_n_levels(b);
    if (w < b) {
        fail("tca: local window w = %d is smaller than the block size b = %d", w, b);
    }
    if (!(alpha >= 0.0f && alpha <= 1.0f)) {
        fail("tca: alpha = %g is not in [0, 1]", double(alpha));
    }
}

int tca_n_levels(int b) {
    if (b < 1 || b > 65536 || (b & (b - 1)) != 0) {
        fail("tca: block size b = %d must be a power of two in [1, 65536]", b);
    }
    int n_levels = 1;
    while ((1 << (n_levels - 1)) < b) {
        n_levels++;
    }
    return n_levels;
}

void tca_config_check(const float * p, int n_levels, int b, const char * what) {
    if (n_levels != tca_n_levels(b)) {
        fail("tca: %s has %d levels, expected %d for b = %d", what, n_levels, tca_n_levels(b), b);
    }
    double sum = 0.0;
    for (int k = 0; k < n_levels; k++) {
        if (!std::isfinite(p[k]) || p[k] < 0.0f) {
            fail("tca: %s has entry %d = %g, expected a finite value >= 0", what, k, double(p[k]));
        }
        sum += double(p[k]);
    }
    if (std::fabs(sum - 1.0) > 1e-4) {
        fail("tca: %s sums to %.6f, expected 1", what, sum);
    }
}

int64_t tca_global_len(int64_t L, int b, int w) {
    return L > int64_t(w) ? (L - w) / b * b : 0;
}

void tca_block_scores(const float * s, int64_t n_blocks, int b, float alpha, double * h) {
    const double a = double(alpha);
    for (int64_t j = 0; j < n_blocks; j++) {
        const float * blk = s + j * b;
        double mass = 0.0, sum_sq = 0.0;
        for (int i = 0; i < b; i++) {
            const double x = double(blk[i]);
            mass += x;
            sum_sq += x * x;
        }
        if (mass > 0.0) {
            const double hhi = sum_sq / (mass * mass);
            h[j]             = (1.0 - a) * mass + a * (1.0 - hhi);
        } else {
            h[j] = 0.0;
        }
    }
}

void tca_budget_counts(const float * p, int n_levels, int64_t n, int64_t * counts) {
    if (n_levels < 1) {
        fail("tca: a configuration needs at least one level, got %d", n_levels);
    }
    double total = 0.0;
    for (int k = 0; k < n_levels; k++) {
        total += double(p[k]);
    }
    std::vector<double> frac(n_levels);
    int64_t assigned = 0;
    for (int k = 0; k < n_levels; k++) {
        const double exact = double(p[k]) / total * double(n);
        counts[k]          = int64_t(std::floor(exact));
        frac[k]            = exact - double(counts[k]);
        assigned += counts[k];
    }
    std::vector<int> order(n_levels);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int x, int y) { return frac[x] != frac[y] ? frac[x] > frac[y] : x > y; });
    // normalising p makes sum(floor) <= n and n - sum(floor) < n_levels
    for (int64_t j = 0; j < n - assigned; j++) {
        counts[order[j % n_levels]]++;
    }
}

void tca_block_budgets(const double * h, int64_t n_blocks, const int64_t * counts, int n_levels,
                       int32_t * keep) {
    int64_t total = 0;
    for (int k = 0; k < n_levels; k++) {
        total += counts[k];
    }
    if (total != n_blocks) {
        fail("tca: block budgets count %lld blocks, expected %lld", (long long)total, (long long)n_blocks);
    }
    for (int64_t j = 0; j < n_blocks; j++) {
        if (!std::isfinite(h[j])) {
            fail("tca: block score %lld is not finite", (long long)j);
        }
    }
    std::vector<int64_t> rank(n_blocks);
    std::iota(rank.begin(), rank.end(), int64_t(0));
    std::sort(rank.begin(), rank.end(),
              [&](int64_t x, int64_t y) { return h[x] != h[y] ? h[x] > h[y] : x < y; });
    int64_t pos = 0;
    for (int k = n_levels - 1; k >= 0; k--) {
        for (int64_t c = 0; c < counts[k]; c++) {
            keep[rank[pos++]] = int32_t(1) << k;
        }
    }
}

// Indices of the t largest of x [n] (ties: lower index first), ascending, into out [t]. idx is scratch.
static void top_t(const float * x, int n, int t, std::vector<int32_t> & idx, int32_t * out) {
    idx.resize(n);
    std::iota(idx.begin(), idx.end(), 0);
    if (t < n) {
        std::partial_sort(idx.begin(), idx.begin() + t, idx.end(),
                          [&](int32_t u, int32_t v) { return x[u] != x[v] ? x[u] > x[v] : u < v; });
        std::sort(idx.begin(), idx.begin() + t);
    }
    std::copy(idx.begin(), idx.begin() + t, out);
}

static void check_scores(const float * s, int64_t L, const char * what) {
    for (int64_t i = 0; i < L; i++) {
        if (!std::isfinite(s[i]) || s[i] < 0.0f) {
            fail("tca: %s[%lld] = %g, expected a finite value >= 0", what, (long long)i, double(s[i]));
        }
    }
}

int64_t tca_select_into(const float * s, int64_t L, const float * p, int n_levels, int b, int w, float alpha,
                        int32_t * out) {
    tca_params_check(b, w, alpha);
    tca_config_check(p, n_levels, b, "configuration");
    if (L < 0 || L > INT32_MAX) {
        fail("tca: sequence length %lld is out of range (positions are int32)", (long long)L);
    }
    check_scores(s, L, "scores");
    const int64_t n_blocks = tca_global_len(L, b, w) / b;
    if (n_blocks == 0) {
        return 0;
    }
    std::vector<double> h(n_blocks);
    tca_block_scores(s, n_blocks, b, alpha, h.data());
    std::vector<int64_t> counts(n_levels);
    tca_budget_counts(p, n_levels, n_blocks, counts.data());
    std::vector<int32_t> keep(n_blocks);
    tca_block_budgets(h.data(), n_blocks, counts.data(), n_levels, keep.data());

    std::vector<int32_t> idx;
    int64_t n_out = 0;
    for (int64_t j = 0; j < n_blocks; j++) {
        int32_t * dst = out + n_out;
        top_t(s + j * b, b, keep[j], idx, dst);
        for (int32_t c = 0; c < keep[j]; c++) {
            dst[c] += int32_t(j * b);
        }
        n_out += keep[j];
    }
    return n_out;
}

std::vector<int32_t> tca_select(const float * s, int64_t L, const float * p, int n_levels, int b, int w,
                                float alpha) {
    std::vector<int32_t> G(size_t(std::max<int64_t>(tca_global_len(L, b, w), 0)));
    G.resize(size_t(tca_select_into(s, L, p, n_levels, b, w, alpha, G.data())));
    return G;
}

std::vector<int32_t> tca_pick_top(const float * probs, int n, int t) {
    if (n < 1 || t < 1 || t > n) {
        fail("tca: cannot keep the top %d of %d tokens", t, n);
    }
    check_scores(probs, n, "probs");
    std::vector<int32_t> idx, out(t);
    top_t(probs, n, t, idx, out.data());
    return out;
}

void tca_simulate(const float * s, const float * m, int64_t L, const float * candidates, int n_cand,
                  int n_levels, int b, int w, float alpha, double * r, int64_t * n_kept) {
    tca_params_check(b, w, alpha);
    for (int c = 0; c < n_cand; c++) {
        tca_config_check(candidates + int64_t(c) * n_levels, n_levels, b, strfmt("candidate %d", c).c_str());
    }
    check_scores(m, L, "column means");
    const int64_t L_g = tca_global_len(L, b, w);
    double total      = 0.0;
    double tail_sum   = 0.0;
    for (int64_t k = 0; k < L; k++) {
        total += double(m[k]);
        if (k >= L_g) {
            tail_sum += double(m[k]);
        }
    }
    if (!(total > 0.0)) {
        fail("tca: column means sum to %g, expected > 0", total);
    }
    std::vector<int32_t> G(static_cast<size_t>(L_g));
    for (int c = 0; c < n_cand; c++) {
        const int64_t n_global =
            tca_select_into(s, L, candidates + int64_t(c) * n_levels, n_levels, b, w, alpha, G.data());
        double kept = tail_sum;
        for (int64_t i = 0; i < n_global; i++) {
            kept += double(m[G[i]]);
        }
        r[c]      = kept / total;
        n_kept[c] = n_global + (L - L_g);
    }
}

}  // namespace tca
