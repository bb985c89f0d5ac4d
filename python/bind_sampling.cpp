// tca._core.Sampler: the token sampler (engine/sampling.h) over NumPy logits.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bind.h"
#include "common.h"
#include "sampling.h"

namespace py = pybind11;

namespace tca {

using logits_array = py::array_t<float, py::array::c_style | py::array::forcecast>;

static const float * logits_row(const logits_array & logits, int64_t & n_vocab) {
    if (logits.ndim() != 1) {
        fail("Sampler: logits must be 1-D [n_vocab], got %d dimensions", int(logits.ndim()));
    }
    n_vocab = int64_t(logits.shape(0));
    return logits.data();
}

void bind_sampling(py::module_ & m) {
    py::class_<sampler>(m, "Sampler")
        .def(py::init([](uint64_t seed, float temperature, int32_t top_k, float top_p, float min_p,
                         float repeat_penalty, int32_t repeat_last_n, float presence_penalty,
                         float frequency_penalty) {
                 sampler_params p;
                 p.seed              = seed;
                 p.temperature       = temperature;
                 p.top_k             = top_k;
                 p.top_p             = top_p;
                 p.min_p             = min_p;
                 p.repeat_penalty    = repeat_penalty;
                 p.repeat_last_n     = repeat_last_n;
                 p.presence_penalty  = presence_penalty;
                 p.frequency_penalty = frequency_penalty;
                 return std::make_unique<sampler>(p);
             }),
             py::arg("seed"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.95f,
             py::arg("min_p") = 0.05f, py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64,
             py::arg("presence_penalty") = 0.0f, py::arg("frequency_penalty") = 0.0f)
        .def(
            "sample",
            [](sampler & s, const logits_array & logits) {
                int64_t n_vocab    = 0;
                const float * data = logits_row(logits, n_vocab);
                py::gil_scoped_release release;
                return s.sample(data, n_vocab);
            },
            py::arg("logits"), "Draws one token id from logits [n_vocab]; temperature <= 0 is greedy.")
        .def(
            "probs",
            [](const sampler & s, const logits_array & logits) {
                int64_t n_vocab    = 0;
                const float * data = logits_row(logits, n_vocab);
                py::array_t<float> out(n_vocab);
                float * o = out.mutable_data();
                std::fill(o, o + n_vocab, 0.0f);
                for (const token_prob & t : s.probs(data, n_vocab)) {
                    o[t.id] = t.p;
                }
                return out;
            },
            py::arg("logits"), "The distribution sample() draws from, [n_vocab], zero for filtered tokens.")
        .def("accept", &sampler::accept, py::arg("token"), "Adds a token to the penalty history.")
        .def("reset", &sampler::reset, "Clears the penalty history and restarts the generator.")
        .def_property_readonly("seed", [](const sampler & s) { return s.params().seed; })
        .def_property_readonly("temperature", [](const sampler & s) { return s.params().temperature; });
}

}  // namespace tca
