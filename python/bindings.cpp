// The pybind11 module tca._core: a thin layer over the runtime. Each concern binds itself in its own
// file (bind_*.cpp); this file only creates the module and the error type.
#include <pybind11/pybind11.h>

#include "bind.h"
#include "common.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "tca-engine runtime";
    static py::exception<tca::error> tca_error(m, "TcaError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) {
                std::rethrow_exception(p);
            }
        } catch (const tca::error & e) {
            py::set_error(tca_error, e.what());
        }
    });
    tca::bind_model(m);
    tca::bind_attention(m);
    tca::bind_gguf(m);
    tca::bind_tca(m);
    tca::bind_sampling(m);
    tca::bind_quants(m);
    tca::bind_vocab(m);
    tca::bind_calibrate(m);
#ifdef TCA_HAVE_CUDA
    tca::bind_cuda(m);
#else
    m.def("cuda_available", [] { return false; });
#endif
}
