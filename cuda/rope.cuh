// RoPE on the device, with the CPU's rule (engine/ops.h): pair i of a head is rotated by the angle
// pos * scale * base^(-2i/n_rot) / freq_factors[i], computed in double precision like the CPU tables.
// Pairs are dims (2i, 2i+1) when adjacent, else (i, i + n_rot/2); dims from n_rot on are not rotated.
// Device code only: included by the .cu files of the rope kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tca {

struct rope_params {
    int head_dim;
    int n_rot;
    float base;
    float scale;
    const float * freq_factors;  // [n_rot/2] or null
    const int32_t * pos;         // [n_tok] device
    bool adjacent;
};

// The dims of pair i.
__device__ __forceinline__ void rope_dims(const rope_params & r, int i, int & i0, int & i1) {
    i0 = r.adjacent ? 2 * i : i;
    i1 = r.adjacent ? 2 * i + 1 : i + r.n_rot / 2;
}

// Rotates pair i of head v [head_dim] of token tok in place.
__device__ __forceinline__ void rope_pair(const rope_params & r, int64_t tok, int i, float * v) {
    double inv = pow(double(r.base), -2.0 * i / r.n_rot) * r.scale;
    if (r.freq_factors != nullptr) {
        inv /= r.freq_factors[i];
    }
    double sn;
    double cs;
    sincos(double(r.pos[tok]) * inv, &sn, &cs);
    const float c = float(cs);
    const float s = float(sn);
    int i0;
    int i1;
    rope_dims(r, i, i0, i1);
    const float a = v[i0];
    const float b = v[i1];
    v[i0]         = a * c - b * s;
    v[i1]         = a * s + b * c;
}

}  // namespace tca
