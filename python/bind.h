// Registration functions of the binding, one per concern (python/bind_*.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace tca {

void bind_model(pybind11::module_ & m);
#ifdef TCA_HAVE_CUDA
void bind_cuda(pybind11::module_ & m);  // python/bind_cuda.cpp
#endif

}  // namespace tca
