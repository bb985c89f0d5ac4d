// RoPE on the device (rope_params in ops.cuh gives the rule). Device code only: included by ops.cu and
// quant_matvec.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ops.cuh"

namespace tca {

// The dims of pair i.
__device__ __forceinline__ void rope_dims(const rope_params & r, int i, int & i0, int & i1) {
    i0 = r.adjacent ? 2 * i : i;
    i1 = r.adjacent ? 2 * i + 1 : i + r.n_rot / 2;
}

// Cosine and sine of pair i's angle for token tok.
__device__ __forceinline__ void rope_cos_sin(const rope_params & r, int64_t tok, int i, float & c,
                                             float & s) {
    double inv = pow(double(r.base), -2.0 * i / r.n_rot) * r.scale;
    if (r.freq_factors != nullptr) {
        inv /= r.freq_factors[i];
    }
    double sn;
    double cs;
    sincos(double(r.pos[tok]) * inv, &sn, &cs);
    c = float(cs);
    s = float(sn);
}

// Rotates pair i of head v [head_dim] of token tok in place.
__device__ __forceinline__ void rope_pair(const rope_params & r, int64_t tok, int i, float * v) {
    float c;
    float s;
    rope_cos_sin(r, tok, i, c, s);
    int i0;
    int i1;
    rope_dims(r, i, i0, i1);
    const float a = v[i0];
    const float b = v[i1];
    v[i0]         = a * c - b * s;
    v[i1]         = a * s + b * c;
}

}  // namespace tca
