// Registration functions of the binding, one per concern (python/bind_*.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace tca {

void bind_model(pybind11::module_ & m);
void bind_attention(pybind11::module_ & m);
void bind_gguf(pybind11::module_ & m);
void bind_tca(pybind11::module_ & m);  // bind_tca.cpp: TCA selection and calibration
void bind_sampling(pybind11::module_ & m);
void bind_quants(pybind11::module_ & m);
void bind_vocab(pybind11::module_ & m);
void bind_calibrate(pybind11::module_ & m);  // bind_calibrate.cpp: statistics of tca-calibrate
#ifdef TCA_HAVE_CUDA
void bind_cuda(pybind11::module_ & m);  // python/bind_cuda.cpp
#endif

}  // namespace tca
