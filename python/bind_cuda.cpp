// Test and benchmark bindings of the CUDA kernels (cuda/): each call uploads NumPy inputs, runs one op
// on the default stream with its output poisoned first (NaN bytes), and downloads the result. Built only
// with the CUDA backend (TCA_HAVE_CUDA).
#ifdef TCA_HAVE_CUDA

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention.cuh"
#include "bench_util.cuh"
#include "bind.h"
#include "common.cuh"
#include "ggml_types.h"
#include "ops.cuh"
#include "quant_matvec.cuh"
#ifdef TCA_HAVE_CUBLAS
#include "matmul.cuh"
#endif

namespace py = pybind11;

namespace tca {

namespace {

// A device allocation of n elements of T, freed on scope exit.
template <typename T>
struct dbuf {
    T * p    = nullptr;
    size_t n = 0;

    explicit dbuf(size_t count) : n(count) {
        if (n > 0) {
            CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
        }
    }
    // src may be null: the memory is left as cudaMalloc returns it.
    dbuf(const void * src, size_t count) : dbuf(count) {
        if (n > 0 && src != nullptr) {
            CUDA_CHECK(cudaMemcpy(p, src, n * sizeof(T), cudaMemcpyHostToDevice));
        }
    }
    ~dbuf() { cudaFree(p); }
    dbuf(const dbuf &)             = delete;
    dbuf & operator=(const dbuf &) = delete;

    void poison() {
        if (n > 0) {
            CUDA_CHECK(cudaMemset(p, 0xFF, n * sizeof(T)));  // all-ones bytes: NaN as fp32 and fp16
        }
    }
    void download(void * dst) const {
        CUDA_CHECK(cudaDeviceSynchronize());
        if (n > 0) {
            CUDA_CHECK(cudaMemcpy(dst, p, n * sizeof(T), cudaMemcpyDeviceToHost));
        }
    }
};

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using u8_array  = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// A C-contiguous float16 array's bits (NumPy float16 has no pybind11 type of its own).
py::buffer_info f16_info(const py::array & a, const char * name) {
    if (a.dtype().kind() != 'f' || a.itemsize() != 2 || !(a.flags() & py::array::c_style)) {
        fail("%s: expected a C-contiguous float16 array", name);
    }
    return a.request();
}

ggml_type weight_type(int type_id) {
    const ggml_type_traits * t = ggml_type_traits_get(uint32_t(type_id));
    if (t == nullptr || !quant_cuda_supported(ggml_type(type_id))) {
        fail("CUDA kernels do not read ggml type id %d", type_id);
    }
    return ggml_type(type_id);
}

// Weight bytes [n_out, row_bytes] on the device.
struct dweight {
    dbuf<uint8_t> bytes;
    qweight_cuda w;

    dweight(int type_id, const u8_array & data, int64_t n_in)
        : bytes(data.data(), size_t(data.size())), w{weight_type(type_id), n_in, 0, nullptr} {
        if (data.ndim() != 2) {
            fail("weight data must be [n_out, row_bytes] uint8");
        }
        w.n_out = data.shape(0);
        w.data  = bytes.p;
        if (n_in % ggml_traits(w.type).block_size != 0 || size_t(data.shape(1)) != w.row_bytes()) {
            fail("weight data: %lld bytes per row, %zu expected for %lld %s values", (long long)data.shape(1),
                 w.row_bytes(), (long long)n_in, ggml_traits(w.type).name);
        }
    }
};

// The extras of every KV head concatenated, with offsets [n_head_kv + 1] (none when there are no lists).
struct flat_extras {
    std::vector<int32_t> all;
    std::vector<int32_t> offsets;

    explicit flat_extras(const std::vector<i32_array> & extras) {
        if (extras.empty()) {
            return;
        }
        offsets.push_back(0);
        for (const auto & e : extras) {
            all.insert(all.end(), e.data(), e.data() + e.size());
            offsets.push_back(int32_t(all.size()));
        }
    }
};

// The device form of an attention plan: lo/hi [n_head_kv, n_q] and the flattened extras.
struct dplan {
    dbuf<int32_t> lo;
    dbuf<int32_t> hi;
    dbuf<int32_t> extra;
    dbuf<int32_t> extra_offset;

    dplan(const i32_array & lo_, const i32_array & hi_, const flat_extras & ex)
        : lo(lo_.data(), size_t(lo_.size())),
          hi(hi_.data(), size_t(hi_.size())),
          extra(ex.all.data(), ex.all.size()),
          extra_offset(ex.offsets.data(), ex.offsets.size()) {}
};

// K and V of every KV head in one allocation, with the device array of per-head pointers.
struct dkv {
    dbuf<__half> k;
    dbuf<__half> v;
    dbuf<const __half *> k_ptr;
    dbuf<const __half *> v_ptr;

    dkv(int64_t n_head_kv, int64_t n_entries, int head_dim, const void * k_src, const void * v_src)
        : k(k_src, size_t(n_head_kv * n_entries * head_dim)),
          v(v_src, size_t(n_head_kv * n_entries * head_dim)),
          k_ptr(size_t(n_head_kv)),
          v_ptr(size_t(n_head_kv)) {
        std::vector<const __half *> kp;
        std::vector<const __half *> vp;
        for (int64_t h = 0; h < n_head_kv; ++h) {
            kp.push_back(k.p + h * n_entries * head_dim);
            vp.push_back(v.p + h * n_entries * head_dim);
        }
        CUDA_CHECK(cudaMemcpy(k_ptr.p, kp.data(), kp.size() * sizeof(kp[0]), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(v_ptr.p, vp.data(), vp.size() * sizeof(vp[0]), cudaMemcpyHostToDevice));
    }
};

attn_cuda_params attn_params_of(int n_head, int n_head_kv, int head_dim, int64_t n_q, int64_t n_entries,
                                const dkv & kv, const dplan & plan, int n_split) {
    attn_cuda_params p{};
    p.n_head       = n_head;
    p.n_head_kv    = n_head_kv;
    p.head_dim     = head_dim;
    p.scale        = 1.0f / std::sqrt(float(head_dim));
    p.n_q          = n_q;
    p.k            = kv.k_ptr.p;
    p.v            = kv.v_ptr.p;
    p.lo           = plan.lo.p;
    p.hi           = plan.hi.p;
    p.extra        = plan.extra.p;
    p.extra_offset = plan.extra_offset.n > 0 ? plan.extra_offset.p : nullptr;
    p.n_keys_max   = n_entries;
    p.n_stable     = n_entries;  // nothing writes K/V while the bindings run attention
    p.n_split      = n_split;
    return p;
}

void check_plan(const i32_array & lo, const i32_array & hi, const std::vector<i32_array> & extras,
                int64_t n_head_kv, int64_t n_q) {
    if (lo.ndim() != 2 || hi.ndim() != 2 || lo.shape(0) != n_head_kv || lo.shape(1) != n_q ||
        hi.shape(0) != n_head_kv || hi.shape(1) != n_q) {
        fail("attention plan: lo and hi must be [n_head_kv=%lld, n_q=%lld]", (long long)n_head_kv,
             (long long)n_q);
    }
    if (!extras.empty() && int64_t(extras.size()) != n_head_kv) {
        fail("attention plan: %zu extra lists for %lld KV heads", extras.size(), (long long)n_head_kv);
    }
}

// q [n_q, n_head, head_dim] f32, k/v [n_head_kv, n_entries, head_dim] f16 -> [n_launch, n_q, n_head,
// head_dim]: n_launch launches back to back on one stream, the odd ones with -v, each into its own output.
// tile_counters: decode splits take tiles from counters (checked to be zero again after the launches)
// rather than fixed shares.
f32_array py_attention_launches(const f32_array & q, const py::array & k, const py::array & v,
                                const i32_array & lo, const i32_array & hi,
                                const std::vector<i32_array> & extras, int n_split, bool tile_counters,
                                int n_launch) {
    const py::buffer_info kb = f16_info(k, "k");
    const py::buffer_info vb = f16_info(v, "v");
    if (q.ndim() != 3 || kb.ndim != 3 || kb.shape != vb.shape || kb.shape[2] != q.shape(2)) {
        fail("attention: q [n_q, n_head, head_dim], k and v [n_head_kv, n_entries, head_dim] expected");
    }
    if (n_launch < 1) {
        fail("attention: n_launch must be positive");
    }
    const int64_t n_q = q.shape(0), n_head = q.shape(1), d = q.shape(2);
    const int64_t n_head_kv = kb.shape[0], n_entries = kb.shape[1];
    check_plan(lo, hi, extras, n_head_kv, n_q);
    for (int64_t i = 0; i < lo.size(); ++i) {
        if (lo.data()[i] < 0 || hi.data()[i] > n_entries) {
            fail("attention plan: range [%d, %d) outside the %lld entries", lo.data()[i], hi.data()[i],
                 (long long)n_entries);
        }
    }
    for (const auto & e : extras) {
        for (int64_t i = 0; i < e.size(); ++i) {
            if (e.data()[i] < 0 || e.data()[i] >= n_entries || (i > 0 && e.data()[i] <= e.data()[i - 1])) {
                fail("attention plan: extra entries must be sorted, unique and below %lld",
                     (long long)n_entries);
            }
        }
    }
    std::vector<uint16_t> v_neg(size_t(n_launch > 1 ? vb.size : 0));
    for (size_t i = 0; i < v_neg.size(); ++i) {
        v_neg[i] = uint16_t(static_cast<const uint16_t *>(vb.ptr)[i] ^ 0x8000u);  // the fp16 sign bit
    }
    dbuf<float> dq(q.data(), size_t(q.size()));
    const dkv kv[2] = {dkv(n_head_kv, n_entries, int(d), kb.ptr, vb.ptr),
                       dkv(n_head_kv, n_launch > 1 ? n_entries : 0, int(d), kb.ptr, v_neg.data())};
    dplan plan(lo, hi, flat_extras(extras));
    dbuf<float> out(size_t(q.size()) * size_t(n_launch));
    out.poison();
    attn_cuda_params p =
        attn_params_of(int(n_head), int(n_head_kv), int(d), n_q, n_entries, kv[0], plan, n_split);
    dbuf<float> work(attention_cuda_work_bytes(p) / sizeof(float));
    work.poison();
    const std::vector<int> zeros(size_t(n_head_kv), 0);
    dbuf<int> counters(zeros.data(), zeros.size());
    p.q         = dq.p;
    p.work      = work.p;
    p.tile_next = tile_counters ? counters.p : nullptr;
    p.n_stable  = n_entries - 1;  // decode reads the last entry after the wait, like a new token's row
    for (int i = 0; i < n_launch; ++i) {
        p.k   = kv[i % 2].k_ptr.p;
        p.v   = kv[i % 2].v_ptr.p;
        p.out = out.p + size_t(i) * size_t(q.size());
        attention_cuda(p, nullptr);
    }
    std::vector<int> after(zeros.size());
    counters.download(after.data());
    if (after != zeros) {
        fail("attention: the launches left their tile counters non-zero");
    }
    f32_array res({int64_t(n_launch), n_q, n_head, d});
    out.download(res.mutable_data());
    return res;
}

f32_array py_attention(const f32_array & q, const py::array & k, const py::array & v, const i32_array & lo,
                       const i32_array & hi, const std::vector<i32_array> & extras, int n_split,
                       bool tile_counters) {
    const f32_array all = py_attention_launches(q, k, v, lo, hi, extras, n_split, tile_counters, 1);
    return f32_array({all.shape(1), all.shape(2), all.shape(3)}, all.data());
}

f32_array py_group_probs(const f32_array & q, const py::array & k, float scale, int64_t norm_begin,
                         int64_t norm_end, int64_t out_begin, int64_t out_end) {
    const py::buffer_info kb = f16_info(k, "k");
    if (q.ndim() != 2 || kb.ndim != 2 || kb.shape[1] != q.shape(1) || norm_end > kb.shape[0]) {
        fail(
            "attention_group_probs: q [n_group, head_dim], k [n_entries, head_dim] with norm_end <= "
            "n_entries");
    }
    dbuf<float> dq(q.data(), size_t(q.size()));
    dbuf<__half> dk(kb.ptr, size_t(kb.shape[0] * kb.shape[1]));
    dbuf<float> out(size_t(std::max<int64_t>(0, out_end - out_begin)));
    dbuf<float> work(attention_group_probs_work_bytes(int(q.shape(0)), norm_begin, norm_end) / sizeof(float));
    out.poison();
    work.poison();
    attention_group_probs_cuda(dq.p, int(q.shape(0)), int(q.shape(1)), scale, dk.p, norm_begin, norm_end,
                               out_begin, out_end, out.p, work.p, nullptr);
    f32_array res(py::ssize_t(out.n));
    out.download(res.mutable_data());
    return res;
}

// A matvec input on the device: x [n_in]; with norm [n_in], the deferred form of rms_norm(x) * norm that
// norm_prepare_cuda writes; with part, x is that form already (x * g, its partial sums of squares part).
struct dinput {
    dbuf<float> x;
    dbuf<float> part;
    float eps;

    dinput(const f32_array & x_, int64_t n_in, const std::optional<f32_array> & norm,
           const std::optional<f32_array> & part_, float eps_, const char * what)
        : x(x_.data(), size_t(x_.size())),
          part(part_ ? part_->data() : nullptr, part_  ? size_t(part_->size())
                                                : norm ? 1
                                                       : 0),
          eps(eps_) {
        if (x_.size() != n_in || (norm && norm->size() != n_in) || (norm && part_)) {
            fail("%s: x and norm must have n_in = %lld values; norm and part exclude each other", what,
                 (long long)n_in);
        }
        if (norm) {
            const dbuf<float> g(norm->data(), size_t(n_in));
            norm_prepare_cuda(x.p, g.p, 1, n_in, x.p, part.p, nullptr);
            CUDA_CHECK(cudaDeviceSynchronize());
        }
    }
    matvec_in in() const { return {x.p, part.n > 0 ? part.p : nullptr, int(part.n), eps}; }
};

// w x (of rms_norm(x) * norm when norm is given, or of the deferred form x, part), added to y when y is
// given. With prepare [n_out], returns (y, xn, part): y also written as the deferred form of
// rms_norm(y) * prepare.
py::object py_matvec(int type_id, const u8_array & data, int64_t n_in, const f32_array & x,
                     const std::optional<f32_array> & norm, const std::optional<f32_array> & part, float eps,
                     const std::optional<f32_array> & y, const std::optional<f32_array> & prepare) {
    dweight w(type_id, data, n_in);
    const dinput in(x, n_in, norm, part, eps, "matvec");
    const int64_t n_out = w.w.n_out;
    if ((y && y->size() != n_out) || (prepare && prepare->size() != n_out)) {
        fail("matvec: y and prepare must have n_out = %lld values", (long long)n_out);
    }
    dbuf<float> dy(y ? y->data() : nullptr, size_t(n_out));
    if (!y) {
        dy.poison();
    }
    dbuf<float> g(prepare ? prepare->data() : nullptr, prepare ? size_t(n_out) : 0);
    dbuf<float> xn(prepare ? size_t(n_out) : 0);
    dbuf<float> dpart(prepare ? size_t(matvec_norm_parts(w.w)) : 0);
    xn.poison();
    dpart.poison();
    dbuf<uint8_t> work(matvec_cuda_work_bytes(w.w));
    matvec_out out{w.w, nullptr, dy.p, y.has_value()};
    if (prepare) {
        out.norm_g = g.p;
        out.xn     = xn.p;
        out.part   = dpart.p;
    }
    matvec_multi_cuda(&out, 1, in.in(), work.p, nullptr);
    f32_array ry(py::ssize_t(dy.n));
    dy.download(ry.mutable_data());
    if (!prepare) {
        return std::move(ry);
    }
    f32_array rxn(py::ssize_t(xn.n));
    f32_array rpart(py::ssize_t(dpart.n));
    xn.download(rxn.mutable_data());
    dpart.download(rpart.mutable_data());
    return py::make_tuple(ry, rxn, rpart);
}

// Products of one input on the device: weights [(type, data [n_out, row_bytes], bias [n_out] or None)],
// their outputs poisoned.
struct dproducts {
    std::vector<std::unique_ptr<dweight>> ws;
    std::vector<std::unique_ptr<dbuf<float>>> biases, ys;
    std::vector<matvec_out> outs;
    size_t work_bytes = 0;

    dproducts(const std::vector<py::tuple> & weights, int64_t n_in) {
        for (const py::tuple & t : weights) {
            ws.push_back(std::make_unique<dweight>(t[0].cast<int>(), t[1].cast<u8_array>(), n_in));
            const qweight_cuda & w = ws.back()->w;
            const float * bias     = nullptr;
            if (!t[2].is_none()) {
                const auto b = t[2].cast<f32_array>();
                if (b.size() != w.n_out) {
                    fail("matvec_multi: a bias of %lld values for %lld rows", (long long)b.size(),
                         (long long)w.n_out);
                }
                biases.push_back(std::make_unique<dbuf<float>>(b.data(), size_t(b.size())));
                bias = biases.back()->p;
            }
            ys.push_back(std::make_unique<dbuf<float>>(size_t(w.n_out)));
            ys.back()->poison();
            outs.push_back({w, bias, ys.back()->p});
            work_bytes = std::max(work_bytes, matvec_cuda_work_bytes(w));
        }
    }

    std::vector<f32_array> download() const {
        std::vector<f32_array> res;
        for (const auto & y : ys) {
            res.emplace_back(py::ssize_t(y->n));
            y->download(res.back().mutable_data());
        }
        return res;
    }
};

// The products of matvec_multi_cuda (weights as in dproducts).
std::vector<f32_array> py_matvec_multi(const std::vector<py::tuple> & weights, int64_t n_in,
                                       const f32_array & x, const std::optional<f32_array> & norm,
                                       float eps) {
    const dinput in(x, n_in, norm, std::nullopt, eps, "matvec_multi");
    dproducts pr(weights, n_in);
    dbuf<uint8_t> work(pr.work_bytes);
    matvec_multi_cuda(pr.outs.data(), int(pr.outs.size()), in.in(), work.p, nullptr);
    return pr.download();
}

// matvec_qkv_rope_cuda of weights (q, k, v as in dproducts) at position pos: [q, k, k_cache, v_cache], the
// caches [n_head_kv, head_dim] fp16.
py::list py_matvec_qkv_rope(const std::vector<py::tuple> & weights, int64_t n_in, const f32_array & x,
                            int32_t pos, int head_dim, int n_rot, float base, float scale,
                            const std::optional<f32_array> & freq_factors,
                            const std::optional<f32_array> & norm, float eps) {
    if (weights.size() != 3 || head_dim <= 0) {
        fail("matvec_qkv_rope: three weights (q, k, v), x [n_in] and a positive head_dim expected");
    }
    if (freq_factors && freq_factors->size() != n_rot / 2) {
        fail("matvec_qkv_rope: %lld freq_factors for n_rot %d", (long long)freq_factors->size(), n_rot);
    }
    const dinput in(x, n_in, norm, std::nullopt, eps, "matvec_qkv_rope");
    dproducts pr(weights, n_in);
    const int64_t n_kv_rows = pr.outs[1].w.n_out;
    const int n_head_kv     = int(n_kv_rows / head_dim);
    dbuf<uint8_t> work(pr.work_bytes);
    dbuf<int32_t> dpos(&pos, 1);
    dbuf<float> dff(freq_factors ? freq_factors->data() : nullptr,
                    freq_factors ? size_t(freq_factors->size()) : 0);
    dbuf<__half> kc{size_t(n_kv_rows)};
    dbuf<__half> vc{size_t(n_kv_rows)};
    kc.poison();
    vc.poison();
    kv_store_dst dst{};
    for (int h = 0; h < std::min(n_head_kv, kRopeStoreHeads); ++h) {
        dst.k[h] = kc.p + int64_t(h) * head_dim;
        dst.v[h] = vc.p + int64_t(h) * head_dim;
    }
    const rope_params r{head_dim, n_rot, base, scale, freq_factors ? dff.p : nullptr, dpos.p, true};
    const matvec_out outs[3] = {pr.outs[0], pr.outs[1], pr.outs[2]};
    matvec_qkv_rope_cuda(outs, in.in(), work.p, r, dst, nullptr);
    py::list res;
    for (f32_array & y : pr.download()) {
        res.append(y);
    }
    py::array rkc(py::dtype("float16"), {py::ssize_t(n_head_kv), py::ssize_t(head_dim)});
    py::array rvc(py::dtype("float16"), {py::ssize_t(n_head_kv), py::ssize_t(head_dim)});
    kc.download(rkc.mutable_data());
    vc.download(rvc.mutable_data());
    res.append(rkc);
    res.append(rvc);
    return res;
}

f32_array py_matvec_swiglu(int type_id, const u8_array & gate, const u8_array & up, int64_t n_in,
                           const f32_array & x, const std::optional<f32_array> & norm, float eps) {
    dweight wg(type_id, gate, n_in);
    dweight wu(type_id, up, n_in);
    const dinput in(x, n_in, norm, std::nullopt, eps, "matvec_swiglu");
    dbuf<float> y(size_t(wg.w.n_out));
    y.poison();
    dbuf<uint8_t> work(matvec_cuda_work_bytes(wg.w));
    matvec_swiglu_cuda(wg.w, wu.w, in.in(), y.p, work.p, nullptr);
    f32_array res(py::ssize_t(y.n));
    y.download(res.mutable_data());
    return res;
}

py::array py_dequantize_f16(int type_id, const u8_array & data, int64_t n_in) {
    dweight w(type_id, data, n_in);
    dbuf<__half> out(size_t(w.w.n_out * n_in));
    out.poison();
    dequantize_f16_cuda(w.w, 0, w.w.n_out, out.p, nullptr);
    py::array res(py::dtype("float16"), {w.w.n_out, n_in});
    out.download(res.mutable_data());
    return res;
}

f32_array py_get_rows(int type_id, const u8_array & data, int64_t n_in, const i32_array & ids) {
    dweight w(type_id, data, n_in);
    for (int64_t i = 0; i < ids.size(); ++i) {
        if (ids.data()[i] < 0 || ids.data()[i] >= w.w.n_out) {
            fail("get_rows: id %d outside the %lld rows", ids.data()[i], (long long)w.w.n_out);
        }
    }
    dbuf<int32_t> dids(ids.data(), size_t(ids.size()));
    dbuf<float> out(size_t(ids.size() * n_in));
    out.poison();
    get_rows_cuda(w.w, dids.p, ids.size(), out.p, nullptr);
    f32_array res({int64_t(ids.size()), n_in});
    out.download(res.mutable_data());
    return res;
}

#ifdef TCA_HAVE_CUBLAS
// x w^T, added to y when y is given.
f32_array py_matmul(int type_id, const u8_array & data, int64_t n_in, const f32_array & x,
                    const std::optional<f32_array> & y0) {
    dweight w(type_id, data, n_in);
    if (x.ndim() != 2 || x.shape(1) != n_in) {
        fail("matmul: x must be [n_tok, n_in=%lld]", (long long)n_in);
    }
    const int64_t n_tok = x.shape(0);
    if (y0 && y0->size() != n_tok * w.w.n_out) {
        fail("matmul: y must be [n_tok, n_out=%lld]", (long long)w.w.n_out);
    }
    dbuf<float> dx(x.data(), size_t(x.size()));
    dbuf<float> y(y0 ? y0->data() : nullptr, size_t(n_tok * w.w.n_out));
    dbuf<uint8_t> work(matmul_cuda_work_bytes(w.w, n_tok));
    if (!y0) {
        y.poison();
    }
    cublasHandle_t handle = nullptr;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
        fail("matmul: cublasCreate failed");
    }
    try {
        matmul_cuda(handle, w.w, dx.p, n_tok, y.p, y0.has_value(), work.p, nullptr);
    } catch (...) {
        cublasDestroy(handle);
        throw;
    }
    f32_array res({n_tok, w.w.n_out});
    y.download(res.mutable_data());
    cublasDestroy(handle);
    return res;
}
#endif

// Runs op on device copies of the arrays (the first is updated in place) and returns the first.
f32_array run_inplace(const f32_array & a, const f32_array & b,
                      const std::function<void(float *, const float *)> & op) {
    dbuf<float> da(a.data(), size_t(a.size()));
    dbuf<float> db(b.data(), size_t(b.size()));
    op(da.p, db.p);
    f32_array res(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
    da.download(res.mutable_data());
    return res;
}

f32_array py_rms_norm(const f32_array & x, const f32_array & g, float eps) {
    const int64_t n_cols = x.shape(x.ndim() - 1);
    if (g.size() != n_cols) {
        fail("rms_norm: weight has %lld values for rows of %lld", (long long)g.size(), (long long)n_cols);
    }
    dbuf<float> dx(x.data(), size_t(x.size()));
    dbuf<float> dg(g.data(), size_t(g.size()));
    dbuf<float> out(size_t(x.size()));
    out.poison();
    rms_norm_cuda(dx.p, dg.p, eps, x.size() / n_cols, n_cols, out.p, nullptr);
    f32_array res(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    out.download(res.mutable_data());
    return res;
}

// rope_store_cuda as the backend runs it (launches of up to kRopeStoreHeads KV heads) on q [n, n_head, d],
// k and v [n, n_head_kv, d]: returns (q and k rotated, and K and V as stored, fp16 [n_head_kv, n, d]).
py::tuple py_rope_store(const f32_array & q, const f32_array & k, const f32_array & v, const i32_array & pos,
                        int n_rot, float base, float scale, const std::optional<f32_array> & freq_factors,
                        bool adjacent) {
    if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || pos.size() != q.shape(0) ||
        k.shape(0) != q.shape(0) || k.shape(2) != q.shape(2) || v.shape(0) != k.shape(0) ||
        v.shape(1) != k.shape(1) || v.shape(2) != k.shape(2)) {
        fail("rope_store: q [n, n_head, d], k and v [n, n_head_kv, d] and pos [n] expected");
    }
    if (freq_factors && freq_factors->size() != n_rot / 2) {
        fail("rope_store: %lld freq_factors for n_rot %d", (long long)freq_factors->size(), n_rot);
    }
    const int64_t n     = q.shape(0);
    const int n_head_kv = int(k.shape(1));
    const int d         = int(q.shape(2));
    dbuf<int32_t> dpos(pos.data(), size_t(pos.size()));
    dbuf<float> dff(freq_factors ? freq_factors->data() : nullptr,
                    freq_factors ? size_t(freq_factors->size()) : 0);
    dbuf<float> dq(q.data(), size_t(q.size()));
    dbuf<float> dk(k.data(), size_t(k.size()));
    dbuf<float> dv(v.data(), size_t(v.size()));
    dbuf<__half> kc(size_t(k.size()));
    dbuf<__half> vc(size_t(v.size()));
    kc.poison();
    vc.poison();
    const rope_params r{d, n_rot, base, scale, freq_factors ? dff.p : nullptr, dpos.p, adjacent};
    for (int h0 = 0; h0 < n_head_kv; h0 += kRopeStoreHeads) {
        const int n_heads = std::min(kRopeStoreHeads, n_head_kv - h0);
        kv_store_dst dst{};
        for (int j = 0; j < n_heads; ++j) {
            dst.k[j] = kc.p + int64_t(h0 + j) * n * d;
            dst.v[j] = vc.p + int64_t(h0 + j) * n * d;
        }
        rope_store_cuda(dq.p, h0 == 0 ? int(q.shape(1)) : 0, dk.p, dv.p, n, n_head_kv, h0, n_heads, r, dst,
                        nullptr);
    }
    f32_array rq(std::vector<py::ssize_t>(q.shape(), q.shape() + 3));
    f32_array rk(std::vector<py::ssize_t>(k.shape(), k.shape() + 3));
    py::array rkc(py::dtype("float16"), {py::ssize_t(n_head_kv), py::ssize_t(n), py::ssize_t(d)});
    py::array rvc(py::dtype("float16"), {py::ssize_t(n_head_kv), py::ssize_t(n), py::ssize_t(d)});
    dq.download(rq.mutable_data());
    dk.download(rk.mutable_data());
    kc.download(rkc.mutable_data());
    vc.download(rvc.mutable_data());
    return py::make_tuple(rq, rk, rkc, rvc);
}

// Times attention on device-filled random inputs for one plan: n_inner launches per timed run, over
// enough copies of K/V that back-to-back launches do not find them in L2 (at least two, so that a copy is
// never read twice in a row); returns milliseconds per launch. graph: the n_inner launches run as one
// captured CUDA graph, without the host's launch calls between them.
std::vector<float> py_bench_attention(int n_head, int n_head_kv, int head_dim, int64_t n_entries,
                                      const i32_array & lo, const i32_array & hi,
                                      const std::vector<i32_array> & extras, int n_split, int n_repeat,
                                      int n_inner, bool graph) {
    const int64_t n_q = lo.shape(1);
    check_plan(lo, hi, extras, n_head_kv, n_q);
    if (n_inner < 1) {
        fail("bench_attention: n_inner must be positive");
    }
    const size_t kv_n     = size_t(n_head_kv) * size_t(n_entries) * size_t(head_dim);
    const size_t kv_bytes = 2 * kv_n * sizeof(__half);
    const int n_copies    = int(std::min<size_t>(
        std::max<size_t>((size_t(256) << 20) / std::max<size_t>(kv_bytes, 1), 2), size_t(n_inner)));
    std::vector<std::unique_ptr<dkv>> kv;
    for (int c = 0; c < n_copies; ++c) {
        kv.push_back(std::make_unique<dkv>(n_head_kv, n_entries, head_dim, nullptr, nullptr));
        fill_uniform_f16_cuda(kv.back()->k.p, int64_t(kv_n), 1 + 2 * c, -1.0f, 1.0f, nullptr);
        fill_uniform_f16_cuda(kv.back()->v.p, int64_t(kv_n), 2 + 2 * c, -1.0f, 1.0f, nullptr);
    }
    dplan plan(lo, hi, flat_extras(extras));
    dbuf<float> q(size_t(n_q) * n_head * head_dim);
    dbuf<float> out(q.n);
    fill_uniform_f32_cuda(q.p, int64_t(q.n), 3, -1.0f, 1.0f, nullptr);
    attn_cuda_params p = attn_params_of(n_head, n_head_kv, head_dim, n_q, n_entries, *kv[0], plan, n_split);
    dbuf<float> work(attention_cuda_work_bytes(p) / sizeof(float));
    const std::vector<int> zeros(size_t(n_head_kv), 0);
    dbuf<int> counters(zeros.data(), zeros.size());
    p.q         = q.p;
    p.out       = out.p;
    p.work      = work.p;
    p.tile_next = counters.p;
    auto run    = [&](cudaStream_t stream) {
        for (int i = 0; i < n_inner; ++i) {
            p.k = kv[size_t(i % n_copies)]->k_ptr.p;
            p.v = kv[size_t(i % n_copies)]->v_ptr.p;
            attention_cuda(p, stream);
        }
    };
    std::vector<float> ms = graph ? time_cuda_graph(run, 2, n_repeat)
                                  : time_cuda([&](int) { run(nullptr); }, 2, n_repeat, nullptr);
    for (float & t : ms) {
        t /= float(n_inner);
    }
    return ms;
}

// Times matvec over n_copies device copies of a random weight (so that the weights are not served from
// L2), n_inner launches per timed run: returns milliseconds per launch.
std::vector<float> py_bench_matvec(int type_id, int64_t n_out, int64_t n_in, int n_copies, int n_inner,
                                   int n_repeat) {
    qweight_cuda w{weight_type(type_id), n_in, n_out, nullptr};
    const size_t bytes = w.row_bytes() * size_t(n_out);
    dbuf<uint8_t> data(bytes * size_t(n_copies));
    fill_bytes_cuda(data.p, int64_t(data.n), 4, 0x3B, nullptr);
    dbuf<float> x{size_t(n_in)};
    dbuf<float> y{size_t(n_out)};
    dbuf<uint8_t> work(matvec_cuda_work_bytes(w));
    fill_uniform_f32_cuda(x.p, n_in, 5, -1.0f, 1.0f, nullptr);
    std::vector<float> ms = time_cuda(
        [&](int) {
            for (int i = 0; i < n_inner; ++i) {
                w.data = data.p + bytes * size_t(i % n_copies);
                matvec_cuda(w, x.p, y.p, work.p, nullptr);
            }
        },
        2, n_repeat, nullptr);
    for (float & t : ms) {
        t /= float(n_inner);
    }
    return ms;
}

// Times a device-to-device copy of n_bytes: milliseconds per copy.
std::vector<float> py_bench_copy(int64_t n_bytes, int n_repeat) {
    dbuf<uint8_t> a{size_t(n_bytes)};
    dbuf<uint8_t> b{size_t(n_bytes)};
    fill_bytes_cuda(a.p, n_bytes, 6, 255, nullptr);
    return time_cuda(
        [&](int) {
            CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, size_t(n_bytes), cudaMemcpyDeviceToDevice, nullptr));
        },
        2, n_repeat, nullptr);
}

}  // namespace

void bind_cuda(py::module_ & m) {
    m.def("cuda_available", [] {
        int n = 0;
        return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    });
    m.def("cuda_device_name", [] {
        cudaDeviceProp prop{};
        CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        return std::string(prop.name);
    });
    m.def("cuda_memory_info", [] {  // (free, total) bytes of the current device
        size_t n_free  = 0;
        size_t n_total = 0;
        CUDA_CHECK(cudaMemGetInfo(&n_free, &n_total));
        return py::make_tuple(n_free, n_total);
    });
    // Holds n_bytes of device memory until collected: tests of what runs out of GPU memory.
    py::class_<dbuf<uint8_t>>(m, "CudaHold").def(py::init<size_t>(), py::arg("n_bytes"));
    m.def("cuda_attention", &py_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("lo"),
          py::arg("hi"), py::arg("extras") = std::vector<i32_array>{}, py::arg("n_split") = 0,
          py::arg("tile_counters") = true);
    m.def("cuda_attention_launches", &py_attention_launches, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("lo"), py::arg("hi"), py::arg("extras"), py::arg("n_split"), py::arg("tile_counters"),
          py::arg("n_launch"));
    m.def("cuda_attention_group_probs", &py_group_probs, py::arg("q"), py::arg("k"), py::arg("scale"),
          py::arg("norm_begin"), py::arg("norm_end"), py::arg("out_begin"), py::arg("out_end"));
    // The matvec bindings take an RMS norm's weight (norm) and eps: x normalised in the deferred form.
    m.def("cuda_matvec", &py_matvec, py::arg("type"), py::arg("data"), py::arg("n_in"), py::arg("x"),
          py::arg("norm") = std::nullopt, py::arg("part") = std::nullopt, py::arg("eps") = 1e-5f,
          py::arg("y") = std::nullopt, py::arg("prepare") = std::nullopt);
    m.def("cuda_matvec_multi", &py_matvec_multi, py::arg("weights"), py::arg("n_in"), py::arg("x"),
          py::arg("norm") = std::nullopt, py::arg("eps") = 1e-5f);
    m.def("cuda_matvec_qkv_rope", &py_matvec_qkv_rope, py::arg("weights"), py::arg("n_in"), py::arg("x"),
          py::arg("pos"), py::arg("head_dim"), py::arg("n_rot"), py::arg("base"), py::arg("scale"),
          py::arg("freq_factors") = std::nullopt, py::arg("norm") = std::nullopt, py::arg("eps") = 1e-5f);
    m.def("cuda_matvec_swiglu", &py_matvec_swiglu, py::arg("type"), py::arg("gate"), py::arg("up"),
          py::arg("n_in"), py::arg("x"), py::arg("norm") = std::nullopt, py::arg("eps") = 1e-5f);
    m.def("cuda_dequantize_f16", &py_dequantize_f16, py::arg("type"), py::arg("data"), py::arg("n_in"));
    m.def("cuda_get_rows", &py_get_rows, py::arg("type"), py::arg("data"), py::arg("n_in"), py::arg("ids"));
#ifdef TCA_HAVE_CUBLAS
    m.def("cuda_matmul", &py_matmul, py::arg("type"), py::arg("data"), py::arg("n_in"), py::arg("x"),
          py::arg("y") = std::nullopt);
#endif
    m.def("cuda_rms_norm", &py_rms_norm, py::arg("x"), py::arg("g"), py::arg("eps"));
    m.def("cuda_rope_store", &py_rope_store, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos"),
          py::arg("n_rot"), py::arg("base"), py::arg("scale"), py::arg("freq_factors") = py::none(),
          py::arg("adjacent"));
    m.def("cuda_swiglu", [](const f32_array & gate, const f32_array & up) {
        if (gate.size() != up.size()) {
            fail("swiglu: gate and up sizes differ");
        }
        return run_inplace(gate, up,
                           [&](float * g, const float * u) { swiglu_cuda(g, u, gate.size(), nullptr); });
    });
    m.def("cuda_add_bias", [](const f32_array & y, const f32_array & b) {
        const int64_t n_cols = b.size();
        if (n_cols == 0 || y.size() % n_cols != 0 || y.shape(y.ndim() - 1) != n_cols) {
            fail("add_bias: the bias must match the rows' width");
        }
        return run_inplace(y, b, [&](float * a, const float * c) {
            add_bias_cuda(a, c, y.size() / n_cols, n_cols, nullptr);
        });
    });
    m.def("cuda_bench_attention", &py_bench_attention, py::arg("n_head"), py::arg("n_head_kv"),
          py::arg("head_dim"), py::arg("n_entries"), py::arg("lo"), py::arg("hi"), py::arg("extras"),
          py::arg("n_split"), py::arg("n_repeat"), py::arg("n_inner") = 1, py::arg("graph") = false);
    m.def("cuda_bench_matvec", &py_bench_matvec, py::arg("type"), py::arg("n_out"), py::arg("n_in"),
          py::arg("n_copies"), py::arg("n_inner"), py::arg("n_repeat"));
    m.def("cuda_bench_copy", &py_bench_copy, py::arg("n_bytes"), py::arg("n_repeat"));
}

}  // namespace tca

#endif  // TCA_HAVE_CUDA
