#include "backend.h"

#include "backend_cpu.h"
#include "common.h"

namespace tca {

#ifdef TCA_HAVE_CUDA
// cuda/backend_cuda.cu: the CUDA backend, whether a GPU and driver answer and whether the kernels handle
// the model (why not, when not).
std::unique_ptr<backend> backend_cuda_create(const model & m);
bool backend_cuda_probe(std::string & why_not);
bool backend_cuda_supports(const model & m, std::string & why_not);
#endif

bool backend_cuda_available() {
#ifdef TCA_HAVE_CUDA
    std::string why_not;
    return backend_cuda_probe(why_not);
#else
    return false;
#endif
}

std::unique_ptr<backend> backend_create(const std::string & device, const model & m, int n_threads) {
    if (device != "cpu" && device != "cuda" && device != "auto") {
        fail("device must be 'cpu', 'cuda' or 'auto' (got '%s')", device.c_str());
    }
#ifdef TCA_HAVE_CUDA
    // "auto" takes the CPU when there is no GPU or the CUDA kernels do not handle the model.
    if (device != "cpu") {
        std::string why_not;
        if (backend_cuda_probe(why_not) && backend_cuda_supports(m, why_not)) {
            return backend_cuda_create(m);
        }
        if (device == "cuda") {
            fail("device 'cuda': %s", why_not.c_str());
        }
    }
#else
    if (device == "cuda") {
        fail("device 'cuda': this build has no CUDA backend (no nvcc was found when it was built)");
    }
#endif
    return std::make_unique<backend_cpu>(m, n_threads);
}

}  // namespace tca
