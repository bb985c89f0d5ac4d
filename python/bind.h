// Registration functions of the binding, one per concern (python/bind_*.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace tca {

void bind_sampling(pybind11::module_ & m);

}  // namespace tca
