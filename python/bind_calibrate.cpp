// tca._core.calibration_stats: the dense calibration pass of tca-calibrate (engine/calibrate.h).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bind.h"
#include "calibrate.h"
#include "common.h"

namespace py = pybind11;

namespace tca {

void bind_calibrate(py::module_ & m) {
    m.def(
        "calibration_stats",
        [](const model & mo, const py::array_t<int32_t, py::array::c_style | py::array::forcecast> & tokens,
           int n_threads, const py::object & progress) {
            if (tokens.ndim() != 1) {
                fail("tca-calibrate: tokens must be 1-D, got %d dimensions", int(tokens.ndim()));
            }
            calibration_progress on_layer;
            if (!progress.is_none()) {
                on_layer = [&progress](int n_done, int n_layer) {
                    py::gil_scoped_acquire acquire;
                    progress(n_done, n_layer);
                };
            }
            calibration_result res;
            {
                py::gil_scoped_release release;
                res = calibration_stats(mo, tokens.data(), tokens.size(), n_threads, on_layer);
            }
            const std::vector<py::ssize_t> shape = {mo.hp.n_layer, mo.hp.n_head_kv, res.n_tokens};
            py::array_t<float> m_out(shape), s_out(shape);
            std::copy(res.m.begin(), res.m.end(), m_out.mutable_data());
            std::copy(res.s.begin(), res.s.end(), s_out.mutable_data());
            return py::make_tuple(m_out, s_out);
        },
        py::arg("model"), py::arg("tokens"), py::arg("n_threads") = 0, py::arg("progress") = py::none(),
        "Calibration statistics of one dense forward pass over tokens [L] (TCA_SPEC.md 7.2): (column means "
        "m, last query's scores s), float32 [n_layer, n_head_kv, L]. progress(n_done, n_layer) is called "
        "after each layer; n_threads 0: all cores.");
}

}  // namespace tca
