// tca._core bindings of the TCA selection (engine/tca_select.h): the same code the runtime and calibration
// use, exposed so that tests compare it with python/tca/tca_reference.py and tca-calibrate drives it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bind.h"
#include "common.h"
#include "tca_calib.h"
#include "tca_select.h"

namespace py = pybind11;

namespace tca {

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

// A 1-D float32 view of `a`; `name` goes into the error message.
static const float * vec_f32(const f32_array & a, const char * name) {
    if (a.ndim() != 1) {
        fail("tca: %s must be 1-D, got %d dimensions", name, int(a.ndim()));
    }
    return a.data();
}

template <typename T>
static py::array_t<T> to_numpy(const std::vector<T> & v) {
    py::array_t<T> out(py::ssize_t(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

void bind_tca(py::module_ & m) {
    m.def(
        "tca_n_levels", [](int b) { return tca_n_levels(b); }, py::arg("b"),
        "Levels 1, 2, ..., b: log2(b) + 1.");

    m.def(
        "tca_block_scores",
        [](const f32_array & s, int b, float alpha) {
            const float * ps = vec_f32(s, "scores");
            tca_n_levels(b);
            py::array_t<double> h(s.size() / b);
            tca_block_scores(ps, s.size() / b, b, alpha, h.mutable_data());
            return h;
        },
        py::arg("s"), py::arg("b"), py::arg("alpha"),
        "Block scores h [len(s) // b] (float64) of the whole blocks.");

    m.def(
        "tca_budget_counts",
        [](const f32_array & p, int64_t n) {
            const float * pp = vec_f32(p, "configuration");
            if (n < 0) {
                fail("tca: negative block count %lld", (long long)n);
            }
            py::array_t<int64_t> counts(p.size());
            tca_budget_counts(pp, int(p.size()), n, counts.mutable_data());
            return counts;
        },
        py::arg("p"), py::arg("n"),
        "Largest-remainder rounding of p * n: int64 counts per level summing to n.");

    m.def(
        "tca_select",
        [](const f32_array & s, const f32_array & p, int b, int w, float alpha) {
            const float * ps = vec_f32(s, "scores");
            const float * pp = vec_f32(p, "configuration");
            return to_numpy(tca_select(ps, s.size(), pp, int(p.size()), b, w, alpha));
        },
        py::arg("s"), py::arg("p"), py::arg("b"), py::arg("w"), py::arg("alpha"),
        "The global set G (int32 positions, ascending) of one (layer, KV head) from the last query's scores "
        "s.");

    m.def(
        "tca_pick_top",
        [](const f32_array & probs, int t) {
            const float * pp = vec_f32(probs, "probs");
            return to_numpy(tca_pick_top(pp, int(probs.size()), t));
        },
        py::arg("probs"), py::arg("t"),
        "Indices (int32, ascending) of the t largest probs; ties: lower index first.");

    m.def(
        "tca_simulate",
        [](const f32_array & s, const f32_array & col_means, const f32_array & candidates, int b, int w,
           float alpha) {
            const float * ps = vec_f32(s, "scores");
            const float * pm = vec_f32(col_means, "column means");
            if (col_means.size() != s.size()) {
                fail("tca: column means have %lld entries, scores %lld", (long long)col_means.size(),
                     (long long)s.size());
            }
            if (candidates.ndim() != 2) {
                fail("tca: candidates must be 2-D [n_cand, n_levels], got %d dimensions",
                     int(candidates.ndim()));
            }
            const int n_cand = int(candidates.shape(0));
            py::array_t<double> r(n_cand);
            py::array_t<int64_t> n_kept(n_cand);
            tca_simulate(ps, pm, s.size(), candidates.data(), n_cand, int(candidates.shape(1)), b, w, alpha,
                         r.mutable_data(), n_kept.mutable_data());
            return py::make_tuple(r, n_kept);
        },
        py::arg("s"), py::arg("m"), py::arg("candidates"), py::arg("b"), py::arg("w"), py::arg("alpha"),
        "Simulate candidates [n_cand, n_levels] on one (layer, KV head): (retained share r [n_cand] float64, "
        "kept token counts [n_cand] int64).");

    m.def(
        "tca_calib_layer",
        [](const f32_array & Q, const f32_array & K, int n_threads) {
            if (Q.ndim() != 3 || K.ndim() != 3 || Q.shape(0) != K.shape(0) || Q.shape(2) != K.shape(2)) {
                fail("tca-calibrate: Q and K must be [L, n_head, head_dim] and [L, n_head_kv, head_dim]");
            }
            const int64_t L = Q.shape(0), n_head_kv = K.shape(1);
            py::array_t<float> m({n_head_kv, L}), s({n_head_kv, L});
            float * pm = m.mutable_data();
            float * ps = s.mutable_data();
            {
                py::gil_scoped_release release;
                thread_pool pool(n_threads);
                tca_calib_layer(Q.data(), K.data(), L, int(Q.shape(1)), int(n_head_kv), int(Q.shape(2)), pm,
                                ps, pool);
            }
            return py::make_tuple(m, s);
        },
        py::arg("Q"), py::arg("K"), py::arg("n_threads") = 1,
        "Calibration statistics of one layer from fp32 Q [L, n_head, d] and K [L, n_head_kv, d], the query "
        "heads spread over n_threads threads: "
        "(column means m [n_head_kv, L], last query's scores s [n_head_kv, L]), float32.");
}

}  // namespace tca
