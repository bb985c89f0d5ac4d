// Test and benchmark bindings of the weight formats and matrix products: dequantize, matmul, get_rows
// on raw ggml bytes held in NumPy arrays.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <tuple>

#include "bind.h"
#include "common.h"
#include "fp16.h"
#include "matmul.h"

namespace py = pybind11;

namespace tca {

namespace {

using u8_array  = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

ggml_type checked_type(uint32_t type_id) {
    const ggml_type_traits * t = ggml_type_traits_get(type_id);
    if (t == nullptr || !t->computable) {
        fail("type id %u is not a supported weight type", type_id);
    }
    return ggml_type(type_id);
}

// A weight view over raw bytes, after checking that they hold exactly n_out rows of n_in elements.
weight checked_weight(uint32_t type_id, const u8_array & raw, int64_t n_in, int64_t n_out) {
    const ggml_type type       = checked_type(type_id);
    const ggml_type_traits & t = ggml_traits(type);
    if (n_in <= 0 || n_out <= 0 || n_in % t.block_size != 0) {
        fail("bad %s shape: n_in %lld, n_out %lld", t.name, (long long)n_in, (long long)n_out);
    }
    const size_t need = row_size(type, n_in) * size_t(n_out);
    if (size_t(raw.size()) != need) {
        fail("%s weight [%lld, %lld] needs %zu bytes, got %zd", t.name, (long long)n_out, (long long)n_in,
             need, raw.size());
    }
    return weight{type, n_in, n_out, raw.data()};
}

// The pool the bindings run on, kept between calls so that benchmarks do not time thread creation.
// The functions that use it keep the GIL, which serializes them (parallel_for is not reentrant).
thread_pool & bound_pool(int n_threads) {
    static std::unique_ptr<thread_pool> pool;
    if (n_threads < 1) {
        fail("n_threads must be at least 1, got %d", n_threads);
    }
    if (!pool || pool->size() != n_threads) {
        pool.reset();
        pool = std::make_unique<thread_pool>(n_threads);
    }
    return *pool;
}

const float * checked_x(const f32_array & x, int64_t n_in, int64_t & n_tok) {
    if (x.ndim() != 2 || x.shape(1) != n_in) {
        fail("x must be [n_tok, %lld] float32", (long long)n_in);
    }
    n_tok = x.shape(0);
    return x.data();
}

py::array_t<float> py_dequantize(uint32_t type_id, const u8_array & raw, int64_t n, bool scalar) {
    const ggml_type type = checked_type(type_id);
    if (n < 0 || n % ggml_traits(type).block_size != 0 || size_t(raw.size()) != row_size(type, n)) {
        fail("dequantize: %zd bytes do not hold %lld %s elements", raw.size(), (long long)n,
             ggml_traits(type).name);
    }
    py::array_t<float> out(n);
    if (scalar) {
        dequantize_row_scalar(type, raw.data(), out.mutable_data(), n);
    } else {
        dequantize_row(type, raw.data(), out.mutable_data(), n);
    }
    return out;
}

py::array_t<float> py_matmul(uint32_t type_id, const u8_array & raw, int64_t n_in, int64_t n_out,
                             const f32_array & x, int n_threads, bool scalar) {
    const weight w = checked_weight(type_id, raw, n_in, n_out);
    int64_t n_tok;
    const float * xp = checked_x(x, n_in, n_tok);
    py::array_t<float> y({n_tok, n_out});
    float * yp         = y.mutable_data();
    thread_pool & pool = bound_pool(n_threads);
    matmul(w, xp, n_tok, yp, pool, scalar ? matmul_kernels::scalar : matmul_kernels::best);
    return y;
}

// Seconds of each of n_repeat runs of matmul (after one warm-up run), timed in C++.
std::vector<double> py_bench_matmul(uint32_t type_id, const u8_array & raw, int64_t n_in, int64_t n_out,
                                    const f32_array & x, int n_threads, int n_repeat) {
    const weight w = checked_weight(type_id, raw, n_in, n_out);
    int64_t n_tok;
    const float * xp = checked_x(x, n_in, n_tok);
    std::vector<float> y(size_t(n_tok * n_out));
    thread_pool & pool = bound_pool(n_threads);
    std::vector<double> times;
    matmul(w, xp, n_tok, y.data(), pool);
    for (int r = 0; r < n_repeat; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        matmul(w, xp, n_tok, y.data(), pool);
        times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return times;
}

// fp32 -> fp16 bits and back, with the build's conversions or the portable bit-level ones.
py::array_t<uint16_t> py_fp32_to_fp16(const f32_array & x, bool portable) {
    py::array_t<uint16_t> out(x.size());
    for (py::ssize_t i = 0; i < x.size(); ++i) {
        out.mutable_data()[i] = portable ? fp32_to_fp16_portable(x.data()[i]) : fp32_to_fp16(x.data()[i]);
    }
    return out;
}

py::array_t<float> py_fp16_to_fp32(const py::array_t<uint16_t, py::array::c_style | py::array::forcecast> & h,
                                   bool portable) {
    py::array_t<float> out(h.size());
    for (py::ssize_t i = 0; i < h.size(); ++i) {
        out.mutable_data()[i] = portable ? fp16_to_fp32_portable(h.data()[i]) : fp16_to_fp32(h.data()[i]);
    }
    return out;
}

// The chunks parallel_for hands out, as (begin, end, chunk) in chunk order; fail_chunk >= 0 makes that
// chunk throw, to check that the error reaches the caller.
std::vector<std::tuple<int64_t, int64_t, int>> py_parallel_for_chunks(int n_threads, int64_t n,
                                                                      int fail_chunk) {
    std::vector<std::tuple<int64_t, int64_t, int>> seen(size_t(n_threads), {-1, -1, -1});
    thread_pool pool(n_threads);
    py::gil_scoped_release release;
    pool.parallel_for(n, [&](int64_t begin, int64_t end, int chunk) {
        seen[size_t(chunk)] = {begin, end, chunk};
        if (chunk == fail_chunk) {
            fail("chunk %d failed", chunk);
        }
    });
    return seen;
}

double py_fma_peak_gflops(int n_threads) {
    return fma_peak_gflops(bound_pool(n_threads));
}

py::array_t<float> py_get_rows(uint32_t type_id, const u8_array & raw, int64_t n_in, int64_t n_out,
                               const i32_array & ids) {
    const weight w  = checked_weight(type_id, raw, n_in, n_out);
    const int64_t n = ids.size();
    py::array_t<float> out({n, n_in});
    get_rows(w, ids.data(), n, out.mutable_data());
    return out;
}

}  // namespace

void bind_quants(py::module_ & m) {
    m.def("dequantize", &py_dequantize, py::arg("type_id"), py::arg("raw"), py::arg("n"),
          py::arg("scalar") = false,
          "Dequantize n elements of a ggml type from raw bytes; returns float32 [n]. scalar=True uses the "
          "portable loops only.");
    m.def(
        "matmul", &py_matmul, py::arg("type_id"), py::arg("raw_weight"), py::arg("n_in"), py::arg("n_out"),
        py::arg("x"), py::arg("n_threads") = 1, py::arg("scalar") = false,
        "y = x @ W.T for W [n_out, n_in] in ggml type type_id, x float32 [n_tok, n_in]; scalar=True uses the "
        "portable kernels only.");
    m.def("bench_matmul", &py_bench_matmul, py::arg("type_id"), py::arg("raw_weight"), py::arg("n_in"),
          py::arg("n_out"), py::arg("x"), py::arg("n_threads"), py::arg("n_repeat"),
          "Seconds of n_repeat matmul runs after a warm-up.");
    m.def("get_rows", &py_get_rows, py::arg("type_id"), py::arg("raw_weight"), py::arg("n_in"),
          py::arg("n_out"), py::arg("ids"),
          "Rows ids of W [n_out, n_in] dequantized: float32 [len(ids), n_in].");
    m.def("fp32_to_fp16", &py_fp32_to_fp16, py::arg("x"), py::arg("portable") = false,
          "fp16 bits of float32 values (round to nearest even).");
    m.def("fp16_to_fp32", &py_fp16_to_fp32, py::arg("bits"), py::arg("portable") = false,
          "float32 values of fp16 bits.");
    m.def("parallel_for_chunks", &py_parallel_for_chunks, py::arg("n_threads"), py::arg("n"),
          py::arg("fail_chunk") = -1, "The (begin, end, chunk) calls of a thread_pool's parallel_for.");
    m.def("fma_peak_gflops", &py_fma_peak_gflops, py::arg("n_threads"),
          "Measured fp32 FMA rate of n_threads threads, GFLOP/s.");
    m.attr("matmul_gemm_min_tokens") = k_matmul_gemm_min_tokens;
}

}  // namespace tca
