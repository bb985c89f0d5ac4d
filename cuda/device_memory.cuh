// Device memory and handles of the CUDA backend: allocations that fail with one message naming what did not
// fit and what is free, buffers that grow on demand, and owners of the stream and the cuBLAS handle (a
// constructor that throws part way, out of memory while uploading weights, still releases them).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#ifdef TCA_HAVE_CUBLAS
#include <cublas_v2.h>
#endif

namespace tca {

// Throws tca::error "CUDA out of memory: <need>, X MiB of Y MiB are free (<why>)": one message for every way
// the GPU runs out of memory.
[[noreturn]] void fail_out_of_memory(const std::string & need, const char * why);

// cudaMalloc that throws the out-of-memory error naming what was asked for; null for 0 bytes.
void * device_alloc(size_t bytes, const char * what);

// cudaMallocAsync on stream; when the pool cannot grow, it returns its unused memory to the device and
// tries once more before throwing like device_alloc.
void * device_alloc_async(size_t bytes, const char * what, cudaStream_t stream);

// Waits for stream, then returns the unused memory of the stream-ordered allocator's pool to the device.
void trim_memory_pool(cudaStream_t stream);

// Memory that grows on demand (contents are lost when it grows). Mem::alloc returns the memory, or null
// or throws when there is none; Mem::free releases it.
template <typename Mem>
class growing_buffer {
  public:
    growing_buffer() = default;
    ~growing_buffer() { Mem::free(p_); }
    growing_buffer(const growing_buffer &)             = delete;
    growing_buffer & operator=(const growing_buffer &) = delete;

    void * reserve(size_t bytes, const char * what) {
        if (bytes > bytes_) {
            release();
            p_     = Mem::alloc(bytes, what);
            bytes_ = p_ != nullptr ? bytes : 0;
        }
        return p_;
    }
    void * get() const { return p_; }
    void release() {
        Mem::free(p_);
        p_     = nullptr;
        bytes_ = 0;
    }

  private:
    void * p_     = nullptr;
    size_t bytes_ = 0;
};

struct device_mem {  // throws a named out-of-memory error
    static void * alloc(size_t bytes, const char * what) { return device_alloc(bytes, what); }
    static void free(void * p) { cudaFree(p); }
};
using device_buffer = growing_buffer<device_mem>;

struct pinned_mem {  // page-locked host memory; null where the driver has none to give
    static void * alloc(size_t bytes, const char *) {
        void * p = nullptr;
        if (cudaMallocHost(&p, bytes) != cudaSuccess) {
            cudaGetLastError();
            return nullptr;
        }
        return p;
    }
    static void free(void * p) { cudaFreeHost(p); }
};
using pinned_buffer = growing_buffer<pinned_mem>;

// A non-blocking stream, usable as the raw handle. The first CUDA call of a process also creates its
// context, so on a full GPU this is where memory runs out.
class cuda_stream {
  public:
    cuda_stream();
    ~cuda_stream() { cudaStreamDestroy(s_); }
    cuda_stream(const cuda_stream &)             = delete;
    cuda_stream & operator=(const cuda_stream &) = delete;
    operator cudaStream_t() const { return s_; }

  private:
    cudaStream_t s_ = nullptr;
};

#ifdef TCA_HAVE_CUBLAS
class cublas_handle {
  public:
    cublas_handle();
    ~cublas_handle() { cublasDestroy(h_); }
    cublas_handle(const cublas_handle &)             = delete;
    cublas_handle & operator=(const cublas_handle &) = delete;
    operator cublasHandle_t() const { return h_; }

  private:
    cublasHandle_t h_ = nullptr;
};
#endif

}  // namespace tca
