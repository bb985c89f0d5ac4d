// Kernels over ggml blocks. matvec: one warp per kMatvecRows output rows; each lane takes whole units
// (16 to 64 contiguous bytes of a row), reads the matching x chunk once through the cache for all its rows,
// and the warp reduces. Q4_K multiplies with int8 activations (dp4a); the other types in fp32.
#include "common.cuh"
#include "quant_blocks.cuh"
#include "quant_matvec.cuh"

namespace tca {

namespace {

constexpr int kMatvecWarps = 4;
constexpr int kMatvecRows  = 4;  // rows per warp: each x chunk read from cache serves this many rows

template <ggml_type T>
__global__ void __launch_bounds__(32 * kMatvecWarps)
    matvec_kernel(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t n_out, const float * x,
                  float * y) {
    using Q            = qtraits<T>;
    const int64_t row0 = (int64_t(blockIdx.x) * kMatvecWarps + threadIdx.x / 32) * kMatvecRows;
    const int lane     = threadIdx.x % 32;
    if (row0 >= n_out) {
        return;
    }
    const int64_t n_units  = n_in / Q::unit;
    float acc[kMatvecRows] = {};
    for (int64_t u = lane; u < n_units; u += 32) {
        float xv[Q::unit];
        const float4 * xp = reinterpret_cast<const float4 *>(x + u * Q::unit);
#pragma unroll
        for (int c = 0; c < Q::unit / 4; ++c) {
            const float4 xx = __ldg(xp + c);
            xv[4 * c]       = xx.x;
            xv[4 * c + 1]   = xx.y;
            xv[4 * c + 2]   = xx.z;
            xv[4 * c + 3]   = xx.w;
        }
#pragma unroll
        for (int rr = 0; rr < kMatvecRows; ++rr) {
            // Rows past the end re-read the last row (branch-free); their sums are dropped below.
            const int64_t row = min(row0 + rr, n_out - 1);
            float v[Q::unit];
            dequant_unit<T>(w + row * row_bytes, u, v);
#pragma unroll
            for (int e = 0; e < Q::unit; ++e) {
                acc[rr] += v[e] * xv[e];
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < kMatvecRows; ++rr) {
        for (int o = 16; o > 0; o /= 2) {
            acc[rr] += __shfl_xor_sync(0xffffffff, acc[rr], o);
        }
        if (lane == 0 && row0 + rr < n_out) {
            y[row0 + rr] = acc[rr];
        }
    }
}

// Activations for the integer path: x quantized per 32 elements to int8, qx [n_in], with ds [n_in / 32]
// = (scale, sum of x) so that sum_e x_e w_e ~ scale * sum_e qx_e w_e. One warp per 32-element block.
__global__ void quantize_x_q8_kernel(const float * x, int64_t n_blocks, int8_t * qx, float2 * ds) {
    const int64_t b = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane  = threadIdx.x % 32;
    if (b >= n_blocks) {
        return;
    }
    const float v = x[b * 32 + lane];
    float amax    = fabsf(v);
    float sum     = v;
    for (int o = 16; o > 0; o /= 2) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
        sum += __shfl_xor_sync(0xffffffff, sum, o);
    }
    const float d     = amax / 127.0f;
    qx[b * 32 + lane] = int8_t(d > 0.0f ? __float2int_rn(v / d) : 0);
    if (lane == 0) {
        ds[b] = make_float2(d, sum);
    }
}

// Q4_K against int8 activations with dp4a: unit u of a row is the pair of 32-element sub-blocks 2p, 2p+1
// of super-block u / 4 (p = u % 4), whose 32 bytes hold sub-block 2p in the low nibbles and 2p+1 in the
// high ones. Per sub-block: d * sc * scale_x * sum(q * qx) - dmin * mn * sum(x).
__global__ void __launch_bounds__(32 * kMatvecWarps)
    matvec_q4k_q8_kernel(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t n_out, const int8_t * qx,
                         const float2 * ds, float * y) {
    const int64_t row0 = (int64_t(blockIdx.x) * kMatvecWarps + threadIdx.x / 32) * kMatvecRows;
    const int lane     = threadIdx.x % 32;
    if (row0 >= n_out) {
        return;
    }
    const int64_t n_units  = n_in / 64;
    float acc[kMatvecRows] = {};
    for (int64_t u = lane; u < n_units; u += 32) {
        int xq[16];  // [0, 8): sub-block 2p, [8, 16): sub-block 2p + 1, 4 values each
        const int4 * xp = reinterpret_cast<const int4 *>(qx + u * 64);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int4 v  = __ldg(xp + c);
            xq[4 * c]     = v.x;
            xq[4 * c + 1] = v.y;
            xq[4 * c + 2] = v.z;
            xq[4 * c + 3] = v.w;
        }
        const float2 ds0 = __ldg(ds + 2 * u);
        const float2 ds1 = __ldg(ds + 2 * u + 1);
#pragma unroll
        for (int rr = 0; rr < kMatvecRows; ++rr) {
            const int64_t row    = min(row0 + rr, n_out - 1);  // past the end: re-read, dropped below
            const block_q4_k * b = reinterpret_cast<const block_q4_k *>(w + row * row_bytes) + u / 4;
            const int p          = int(u % 4);
            const uint4 * src    = reinterpret_cast<const uint4 *>(b->qs + 32 * p);
            const uint4 q0       = src[0];
            const uint4 q1       = src[1];
            const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
            int s0               = 0;
            int s1               = 0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                s0 = __dp4a(int(qw[k] & 0x0F0F0F0Fu), xq[k], s0);
                s1 = __dp4a(int((qw[k] >> 4) & 0x0F0F0F0Fu), xq[8 + k], s1);
            }
            float sc0, mn0, sc1, mn1;
            q4k_scale_min(2 * p, b->scales, sc0, mn0);
            q4k_scale_min(2 * p + 1, b->scales, sc1, mn1);
            const float d    = __half2float(b->d);
            const float dmin = __half2float(b->dmin);
            acc[rr] +=
                d * (sc0 * ds0.x * float(s0) + sc1 * ds1.x * float(s1)) - dmin * (mn0 * ds0.y + mn1 * ds1.y);
        }
    }
#pragma unroll
    for (int rr = 0; rr < kMatvecRows; ++rr) {
        for (int o = 16; o > 0; o /= 2) {
            acc[rr] += __shfl_xor_sync(0xffffffff, acc[rr], o);
        }
        if (lane == 0 && row0 + rr < n_out) {
            y[row0 + rr] = acc[rr];
        }
    }
}

// One thread per unit of the selected rows; src_row(r) gives the weight row of output row r.
template <ggml_type T, typename Out, typename RowOf>
__global__ void dequant_rows_kernel(const uint8_t * w, size_t row_bytes, int64_t n_in, int64_t n_rows,
                                    RowOf row_of, Out * out) {
    using Q               = qtraits<T>;
    const int64_t n_units = n_in / Q::unit;
    const int64_t idx     = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= n_rows * n_units) {
        return;
    }
    const int64_t r = idx / n_units;
    const int64_t u = idx % n_units;
    float v[Q::unit];
    dequant_unit<T>(w + row_of(r) * row_bytes, u, v);
    Out * dst = out + r * n_in + u * Q::unit;
#pragma unroll
    for (int e = 0; e < Q::unit; ++e) {
        dst[e] = Out(v[e]);
    }
}

struct row_offset {
    int64_t row0;
    __device__ int64_t operator()(int64_t r) const { return row0 + r; }
};
struct row_ids {
    const int32_t * ids;
    __device__ int64_t operator()(int64_t r) const { return ids[r]; }
};

// Calls fn.template operator()<T>() for the kernel instance of w's type; fails for other types.
template <typename Fn>
void quant_dispatch(const qweight_cuda & w, const char * what, Fn && fn) {
    switch (w.type) {
        case ggml_type::F16:
            fn.template operator()<ggml_type::F16>();
            break;
        case ggml_type::Q8_0:
            fn.template operator()<ggml_type::Q8_0>();
            break;
        case ggml_type::Q4_0:
            fn.template operator()<ggml_type::Q4_0>();
            break;
        case ggml_type::Q4_1:
            fn.template operator()<ggml_type::Q4_1>();
            break;
        case ggml_type::Q5_0:
            fn.template operator()<ggml_type::Q5_0>();
            break;
        case ggml_type::Q5_1:
            fn.template operator()<ggml_type::Q5_1>();
            break;
        case ggml_type::Q5_K:
            fn.template operator()<ggml_type::Q5_K>();
            break;
        case ggml_type::Q4_K:
            fn.template operator()<ggml_type::Q4_K>();
            break;
        case ggml_type::Q6_K:
            fn.template operator()<ggml_type::Q6_K>();
            break;
        default:
            fail("%s: weight type %s is not supported on CUDA", what, ggml_traits(w.type).name);
    }
}

void quant_check(const qweight_cuda & w, const char * what) {
    if (!quant_cuda_supported(w.type)) {
        fail("%s: weight type %s is not supported on CUDA", what, ggml_traits(w.type).name);
    }
    const int64_t qk = ggml_traits(w.type).block_size;
    if (w.n_in <= 0 || w.n_out <= 0 || w.n_in % qk != 0) {
        fail("%s: weight [%lld, %lld] of type %s: n_in must be a positive multiple of %lld", what,
             (long long)w.n_out, (long long)w.n_in, ggml_traits(w.type).name, (long long)qk);
    }
}

// Launchers of each kernel for one weight type (see quant_dispatch).
struct matvec_launch {
    const qweight_cuda & w;
    const float * x;
    float * y;
    void * work;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const auto grid      = unsigned(ceil_div(w.n_out, kMatvecWarps * kMatvecRows));
        const uint8_t * data = static_cast<const uint8_t *>(w.data);
        if constexpr (T == ggml_type::Q4_K) {
            // Integer dot products, as ggml's own CPU and CUDA paths do for K-quants.
            const int64_t n_blocks = w.n_in / 32;
            int8_t * qx            = static_cast<int8_t *>(work);
            float2 * ds            = reinterpret_cast<float2 *>(qx + w.n_in);
            quantize_x_q8_kernel<<<unsigned(ceil_div(n_blocks, 8)), 256, 0, stream>>>(x, n_blocks, qx, ds);
            CUDA_CHECK_LAUNCH("quantize_x_q8_kernel");
            matvec_q4k_q8_kernel<<<grid, 32 * kMatvecWarps, 0, stream>>>(data, w.row_bytes(), w.n_in, w.n_out,
                                                                         qx, ds, y);
            CUDA_CHECK_LAUNCH("matvec_q4k_q8_kernel");
        } else {
            matvec_kernel<T>
                <<<grid, 32 * kMatvecWarps, 0, stream>>>(data, w.row_bytes(), w.n_in, w.n_out, x, y);
            CUDA_CHECK_LAUNCH("matvec_kernel");
        }
    }
};

struct dequant_launch {
    const qweight_cuda & w;
    int64_t row0;
    int64_t n_rows;
    __half * out;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const int64_t n = n_rows * (w.n_in / qtraits<T>::unit);
        dequant_rows_kernel<T, __half><<<unsigned(ceil_div(n, 256)), 256, 0, stream>>>(
            static_cast<const uint8_t *>(w.data), w.row_bytes(), w.n_in, n_rows, row_offset{row0}, out);
        CUDA_CHECK_LAUNCH("dequant_rows_kernel");
    }
};

struct get_rows_launch {
    const qweight_cuda & w;
    const int32_t * ids;
    int64_t n;
    float * out;
    cudaStream_t stream;
    template <ggml_type T>
    void operator()() const {
        const int64_t n_units = n * (w.n_in / qtraits<T>::unit);
        dequant_rows_kernel<T, float><<<unsigned(ceil_div(n_units, 256)), 256, 0, stream>>>(
            static_cast<const uint8_t *>(w.data), w.row_bytes(), w.n_in, n, row_ids{ids}, out);
        CUDA_CHECK_LAUNCH("dequant_rows_kernel");
    }
};

}  // namespace

size_t qweight_cuda::row_bytes() const {
    const ggml_type_traits & t = ggml_traits(type);
    return size_t(n_in / t.block_size) * t.type_size;
}

bool quant_cuda_supported(ggml_type type) {
    switch (type) {
        case ggml_type::F16:
        case ggml_type::Q8_0:
        case ggml_type::Q4_0:
        case ggml_type::Q4_1:
        case ggml_type::Q5_0:
        case ggml_type::Q5_1:
        case ggml_type::Q5_K:
        case ggml_type::Q4_K:
        case ggml_type::Q6_K:
            return true;
        default:
            return false;
    }
}

size_t matvec_cuda_work_bytes(const qweight_cuda & w) {
    // n_in is a multiple of 256 for Q4_K, so the float2 array after the int8 values stays aligned.
    return w.type == ggml_type::Q4_K ? size_t(w.n_in) + size_t(w.n_in / 32) * sizeof(float2) : 0;
}

void matvec_cuda(const qweight_cuda & w, const float * x, float * y, void * work, cudaStream_t stream) {
    quant_check(w, "matvec_cuda");
    if (matvec_cuda_work_bytes(w) > 0 && work == nullptr) {
        fail("matvec_cuda: type %s needs a workspace of %zu bytes", ggml_traits(w.type).name,
             matvec_cuda_work_bytes(w));
    }
    quant_dispatch(w, "matvec_cuda", matvec_launch{w, x, y, work, stream});
}

void dequantize_f16_cuda(const qweight_cuda & w, int64_t row0, int64_t n_rows, __half * out,
                         cudaStream_t stream) {
    quant_check(w, "dequantize_f16_cuda");
    if (row0 < 0 || n_rows < 0 || row0 + n_rows > w.n_out) {
        fail("dequantize_f16_cuda: rows [%lld, %lld) outside the weight's %lld rows", (long long)row0,
             (long long)(row0 + n_rows), (long long)w.n_out);
    }
    if (n_rows > 0) {
        quant_dispatch(w, "dequantize_f16_cuda", dequant_launch{w, row0, n_rows, out, stream});
    }
}

void get_rows_cuda(const qweight_cuda & w, const int32_t * ids, int64_t n, float * out, cudaStream_t stream) {
    quant_check(w, "get_rows_cuda");
    if (n > 0) {
        quant_dispatch(w, "get_rows_cuda", get_rows_launch{w, ids, n, out, stream});
    }
}

}  // namespace tca
