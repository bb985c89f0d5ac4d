// Test bindings of the CPU attention core: run it on plain arrays with an explicit plan, so tests can
// compare it with attention under the equivalent boolean mask.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>

#include "attention.h"
#include "bind.h"
#include "common.h"

namespace py = pybind11;

namespace tca {

namespace {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i64_array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// Fills one cache head per KV head from k, v [n_keys, n_head_kv, head_dim] (rounded to fp16 on the way).
std::vector<kv_head> heads_from(const f32_array & k, const f32_array & v) {
    if (k.ndim() != 3 || v.ndim() != 3 || k.shape(0) != v.shape(0) || k.shape(1) != v.shape(1) ||
        k.shape(2) != v.shape(2)) {
        fail("k and v must both be [n_keys, n_head_kv, head_dim]");
    }
    const int64_t        n = k.shape(0), n_head_kv = k.shape(1), d = k.shape(2);
    kv_cache             cache(1, int(n_head_kv), int(d));
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        pos[size_t(i)] = int32_t(i);
    }
    std::vector<kv_head> heads;
    for (int64_t ih = 0; ih < n_head_kv; ++ih) {
        cache.append(0, int(ih), k.data() + ih * d, v.data() + ih * d, n_head_kv * d, pos.data(), n);
        heads.push_back(cache.head(0, int(ih)));
    }
    return heads;
}

}  // namespace

void bind_attention(py::module_ & m) {
    m.def(
        "attention",
        [](const f32_array & q, const f32_array & k, const f32_array & v, const i64_array & lo, const i64_array & hi,
           const std::vector<std::vector<int32_t>> & extra, int n_threads) {
            std::vector<kv_head> heads = heads_from(k, v);
            if (q.ndim() != 3 || q.shape(2) != k.shape(2) || q.shape(1) % k.shape(1) != 0) {
                fail("q must be [n_q, n_head, head_dim] with n_head a multiple of n_head_kv");
            }
            const int64_t n_q = q.shape(0), n_head_kv = k.shape(1);
            if (lo.ndim() != 2 || lo.shape(0) != n_head_kv || lo.shape(1) != n_q || hi.ndim() != 2 ||
                hi.shape(0) != n_head_kv || hi.shape(1) != n_q || int64_t(extra.size()) != n_head_kv) {
                fail("lo and hi must be [n_head_kv, n_q] and extra a list of n_head_kv index lists");
            }
            std::vector<attn_plan> plans(static_cast<size_t>(n_head_kv));
            for (int64_t ih = 0; ih < n_head_kv; ++ih) {
                attn_plan & p = plans[size_t(ih)];
                p.extra       = extra[size_t(ih)];
                p.lo.assign(lo.data() + ih * n_q, lo.data() + (ih + 1) * n_q);
                p.hi.assign(hi.data() + ih * n_q, hi.data() + (ih + 1) * n_q);
                for (int64_t i = 0; i < n_q; ++i) {
                    if (p.lo[size_t(i)] < 0 || p.lo[size_t(i)] > p.hi[size_t(i)] || p.hi[size_t(i)] > k.shape(0)) {
                        fail("query %lld of KV head %lld has an invalid key range", (long long) i, (long long) ih);
                    }
                }
                for (int32_t e : p.extra) {
                    if (e < 0 || e >= k.shape(0)) {
                        fail("extra key %d is outside [0, %lld)", e, (long long) k.shape(0));
                    }
                }
                if (!std::is_sorted(p.extra.begin(), p.extra.end())) {
                    fail("extra keys of KV head %lld are not sorted", (long long) ih);
                }
            }
            f32_array   out({ q.shape(0), q.shape(1), q.shape(2) });
            attn_params ap;
            ap.n_head    = int(q.shape(1));
            ap.n_head_kv = int(n_head_kv);
            ap.head_dim  = int(q.shape(2));
            ap.scale     = 1.0f / std::sqrt(float(ap.head_dim));
            ap.n_q       = n_q;
            ap.q         = q.data();
            ap.out       = out.mutable_data();
            thread_pool pool(n_threads);
            attention_cpu(ap, heads.data(), plans.data(), pool);
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("lo"), py::arg("hi"), py::arg("extra"),
        py::arg("n_threads") = 2,
        "CPU attention core: query i of KV head g attends to keys [lo[g, i], hi[g, i]) plus extra[g] below lo.");
}

}  // namespace tca
