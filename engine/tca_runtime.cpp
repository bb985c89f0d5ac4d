#include "tca_runtime.h"

#include <algorithm>

#include "tca_select.h"

namespace tca {

void plan_dense(int64_t n, int64_t n_new, attn_plan & plan) {
    const int64_t n0 = n - n_new;
    plan.extra.clear();
    plan.lo.assign(size_t(n_new), 0);
    plan.hi.resize(size_t(n_new));
    for (int64_t i = 0; i < n_new; ++i) {
        plan.hi[size_t(i)] = n0 + i + 1;
    }
}

void tca_plan_prefill(const tca_config & cfg, const float * p, int64_t n, int64_t n_global, int64_t n_new,
                      const tca_probs_fn & probs, attn_plan & plan, tca_keep & keep) {
    keep.changed      = false;
    const int64_t r0  = n_global;  // the uncompacted region [r0, n) is where selection happens
    const int64_t L   = n - r0;
    const int64_t L_g = tca_global_len(L, cfg.block, cfg.window);
    if (L_g <= 0) {
        plan_dense(n, n_new, plan);  // spec 4.2: the region is no longer than w + b - 1: exactly dense
        return;
    }
    std::vector<float> s(static_cast<size_t>(L));
    probs(r0, n, r0, n, s.data());
    const std::vector<int32_t> g = tca_select(s.data(), L, p, cfg.n_levels, cfg.block, cfg.window, cfg.alpha);

    // Extra keys: every compacted token, then G; query i sees those below its dense range
    // [r0 + max(0, min(rel - w + 1, L_g)), own index] (its window, joined with the tail once inside it).
    plan.extra.resize(size_t(r0) + g.size());
    for (int64_t j = 0; j < r0; ++j) {
        plan.extra[size_t(j)] = int32_t(j);
    }
    for (size_t j = 0; j < g.size(); ++j) {
        plan.extra[size_t(r0) + j] = int32_t(r0 + g[j]);
    }
    const int64_t n0 = n - n_new;
    plan.lo.resize(size_t(n_new));
    plan.hi.resize(size_t(n_new));
    for (int64_t i = 0; i < n_new; ++i) {
        const int64_t rel  = n0 + i - r0;
        plan.lo[size_t(i)] = r0 + std::max<int64_t>(0, std::min<int64_t>(rel - cfg.window + 1, L_g));
        plan.hi[size_t(i)] = n0 + i + 1;
    }

    // After the chunk the head keeps the compacted tokens, G and the tail.
    keep.changed = true;
    keep.keep    = plan.extra;
    for (int64_t j = r0 + L_g; j < n; ++j) {
        keep.keep.push_back(int32_t(j));
    }
    keep.n_global = r0 + int64_t(g.size());
}

void tca_decode_compact(const tca_config & cfg, const float * p, int64_t n, int64_t n_global,
                        const tca_probs_fn & probs, tca_keep & keep) {
    keep.changed = false;
    if (n - n_global < int64_t(cfg.window) + cfg.block) {
        return;
    }
    const int64_t b0 = n_global;  // the oldest block of the recent region: [b0, b0 + b)
    std::vector<float> s(static_cast<size_t>(cfg.block));
    probs(0, n, b0, b0 + cfg.block, s.data());
    const int t                 = tca_decode_keep(p, cfg.n_levels);
    std::vector<int32_t> picked = tca_pick_top(s.data(), cfg.block, t);
    std::sort(picked.begin(), picked.end());

    keep.changed = true;
    keep.keep.clear();
    for (int64_t j = 0; j < b0; ++j) {
        keep.keep.push_back(int32_t(j));
    }
    for (int32_t j : picked) {
        keep.keep.push_back(int32_t(b0 + j));
    }
    for (int64_t j = b0 + cfg.block; j < n; ++j) {
        keep.keep.push_back(int32_t(j));
    }
    keep.n_global = b0 + t;
}

}  // namespace tca
