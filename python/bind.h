// Registration functions of the binding, one per concern (python/bind_*.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace tca {


}  // namespace tca
