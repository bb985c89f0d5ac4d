// Internal to the quants module: the SIMD kernel tables (quants_dot_simd.cpp), looked up by
// vec_dot_q8_best / vec_dot_f32_best. Each returns nullptr for a type it has no kernel for.
#pragma once

#include "quants.h"

namespace tca {

vec_dot_q8_fn  vec_dot_q8_simd(ggml_type type);
vec_dot_f32_fn vec_dot_f32_simd(ggml_type type);

}  // namespace tca
