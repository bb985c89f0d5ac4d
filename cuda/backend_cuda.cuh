// The CUDA backend of engine/backend.h: the weights uploaded once at creation, activations and the
// per-(layer, KV head) KV cache in device memory, every op on one stream through the kernels of this
// folder. The host keeps what planning needs: each head's length and positions.
#pragma once

#include <memory>
#include <string>

#include "backend.h"

namespace tca {

// Whether a CUDA driver and GPU answer; why_not says what failed when not.
bool backend_cuda_probe(std::string & why_not);

// Whether the kernels handle the model (head_dim 64 or 128, every weight of a type they read or that is
// uploaded as F16); why_not names what they do not handle when not.
bool backend_cuda_supports(const model & m, std::string & why_not);

// Uploads the model's weights (F32 and BF16 matrices as F16) and returns the backend. Throws
// tca::error for a weight type or head_dim the kernels do not handle, and when device memory runs out
// (naming what was asked and what was free).
std::unique_ptr<backend> backend_cuda_create(const model & m);

}  // namespace tca
