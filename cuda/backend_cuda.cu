// The CUDA backend (backend_cuda.cuh): weight upload, device buffers, the KV cache in device memory, and
// the dispatch of each backend op to its kernel.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "attention.cuh"
#include "backend_cuda.cuh"
#include "common.cuh"
#include "device_memory.cuh"
#include "fp16.h"
#include "model.h"
#include "ops.cuh"
#include "quant_matvec.cuh"
#include "quants.h"
#ifdef TCA_HAVE_CUBLAS
#include "matmul.cuh"
#endif

namespace tca {

namespace {

#ifdef TCA_HAVE_CUBLAS
// Products of up to this many tokens run as one matvec per token (the weight read once per token);
// longer ones through cuBLAS (the weight dequantized to fp16 once per call).
constexpr int64_t k_matvec_max_tokens = 4;
#endif
// A head of n entries is allocated with room for kv_capacity(n): n plus 1/16, rounded up to a 256-entry
// step. A head that fills up is reallocated (and its rows copied) at the capacity of what it needs, so a
// dense head is copied once per n/16 appended tokens: 16 rows per token against the n rows that every
// decode step's attention reads. After a TCA compaction a head is reallocated to the capacity of what it
// keeps once it holds more than one step beyond that, so TCA frees what it drops. Allocations are
// stream-ordered (cudaMallocAsync): replacing a head's buffers never waits for the GPU.
constexpr int64_t k_kv_step = 256;

int64_t kv_capacity(int64_t n) {
    const int64_t want = n + n / 16;
    return (want + k_kv_step - 1) / k_kv_step * k_kv_step;
}

// out[j, :] = src[idx[j], :] for j < n, rows of head_dim values, for K and V at once.
__global__ void kv_gather_kernel(const __half * k, const __half * v, const int32_t * idx, int64_t n,
                                 int head_dim, __half * k_out, __half * v_out) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n * head_dim) {
        return;
    }
    const int64_t j   = i / head_dim;
    const int64_t src = int64_t(idx[j]) * head_dim + i % head_dim;
    k_out[i]          = k[src];
    v_out[i]          = v[src];
}

struct kv_head_cuda {
    __half * k       = nullptr;  // [cap, head_dim]
    __half * v       = nullptr;  // [cap, head_dim]
    int64_t cap      = 0;
    int64_t n        = 0;
    int64_t n_global = 0;
    std::vector<int32_t> pos;  // [n] absolute positions (host)
};

class backend_cuda final : public backend {
  public:
    explicit backend_cuda(const model & m);
    ~backend_cuda() override;
    backend_cuda(const backend_cuda &)             = delete;
    backend_cuda & operator=(const backend_cuda &) = delete;

    const char * name() const override { return "cuda"; }
    float * buffer(act_buffer id, size_t n) override {
        return static_cast<float *>(buffers_[size_t(id)].reserve(n * sizeof(float), "an activation buffer"));
    }
    void set_positions(const int32_t * pos, int64_t n) override;

    void get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) override;
    void rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                  float * out) override {
        prepared_.reset();
        rms_norm_cuda(x, vector_of(g), eps, n_rows, n_cols, out, stream_);
    }
    void matmul(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y) override {
        product(w, bias, x, n_tok, y, false, nullptr);
    }
    void matmul_add(const weight & w, const float * x, int64_t n_tok, float * y,
                    const norm_input * next) override {
        product(w, nullptr, x, n_tok, y, true, next);
    }
    void matmul_multi(const matmul_out * outs, int n, const float * x, int64_t n_tok) override;
    void ffn_swiglu(const weight & w_gate, const weight & w_up, const norm_input & in, int64_t n_tok,
                    float * gate, float * up) override;
    void rope_append(int il, float * q, float * k, const float * v, int64_t n) override;
    void qkv_rope_append(int il, const matmul_out * qkv, const norm_input & in, int64_t n_tok) override;

    kv_head_view kv_view(int il, int ih) const override {
        const kv_head_cuda & h = head(il, ih);
        return {h.n, h.n_global, h.pos.data()};
    }
    void kv_keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) override;
    void kv_clear() override;  // frees every head's device buffers
    size_t kv_bytes() const override;

    void attention(int il, const float * q, int64_t n_q, const attn_plan * plans, float * out) override;
    void group_probs(int il, int ih, const float * q, int n_group, int64_t norm_begin, int64_t norm_end,
                     int64_t out_begin, int64_t out_end, float * out) override;

    void to_host(const float * src, size_t n, float * dst) override;

  private:
    void upload_weight(const weight & w, const std::string & name);
    void upload_vector(const float * v, int64_t n);
    const qweight_cuda & weight_of(const weight & w) const;
    bool use_matvec(int64_t n_tok) const;  // one matvec per token rather than a cuBLAS product
    // matmul, or matmul_add when add is set.
    void product(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y, bool add,
                 const norm_input * next);
    // The deferred form (matvec_in) of the norm input in [n_tok, n_in], row 0 (row t: x + t * n_in, part +
    // t * n_part): the one the last product prepared for it, or norm_prepare_cuda's, written now.
    matvec_in deferred_norm(const norm_input & in, int64_t n_tok, int64_t n_in);
    void * matvec_work(const qweight_cuda & w);
    // The matvec form of outs [n] (outputs as given) into mv; returns the workspace their types need.
    void * matvec_outs(const matmul_out * outs, int n, matvec_out * mv);
    const float * vector_of(const float * v) const;
    kv_head_cuda & head(int il, int ih) { return heads_[size_t(il) * hp_.n_head_kv + ih]; }
    const kv_head_cuda & head(int il, int ih) const { return heads_[size_t(il) * hp_.n_head_kv + ih]; }
    void kv_reserve(kv_head_cuda & h, int64_t n_needed);
    rope_params rope_of() const;
    // Room for n more rows in the KV heads [h0, h0 + n_heads) of layer il; where their rows go.
    kv_store_dst kv_append_dst(int il, int h0, int n_heads, int64_t n);
    void kv_appended(int il, int64_t n);  // the n rows are stored: positions and counts
    // Allocates K and V of cap rows each (both or neither, throwing tca::error).
    void kv_alloc(int64_t cap, __half *& k, __half *& v);
    // Frees a head's K and V once the stream is done with them and makes h use k, v [cap, head_dim].
    void kv_swap(kv_head_cuda & h, __half * k, __half * v, int64_t cap);
    void upload_plans(const attn_plan * plans, int64_t n_q);
    template <typename T>
    T * upload(device_buffer & buf, const T * src, size_t n, const char * what);

    const hparams hp_;
    cuda_stream stream_;  // declared before every buffer: destroyed after them
#ifdef TCA_HAVE_CUBLAS
    // Created after the weights: where GPU memory runs short, they are most often what does not fit.
    std::optional<cublas_handle> cublas_;
#endif
    std::deque<device_buffer> weight_mem_;                      // one per uploaded tensor
    std::unordered_map<const void *, qweight_cuda> weights_;    // host data -> device weight
    std::unordered_map<const float *, const float *> vectors_;  // host vector -> device copy
    const float * rope_freqs_ = nullptr;                        // [n_rot/2] device, or null

    std::array<device_buffer, size_t(act_buffer::count)> buffers_;
    device_buffer pos_mem_, ids_mem_, work_mem_, matvec_work_mem_, probs_mem_, probs_work_mem_;
    // The norm input that the last product prepared (matmul_add's next), its partial sums in norm_part_mem_:
    // only until the next product or norm.
    struct prepared_norm {
        norm_input in;
        int64_t n_tok;
        int n_part;
    };
    std::optional<prepared_norm> prepared_;
    device_buffer norm_part_mem_;
    std::vector<int32_t> pos_;  // [n] positions of the current eval (host)

    std::vector<kv_head_cuda> heads_;  // [n_layer * n_head_kv]
    device_buffer kv_ptr_mem_;         // [2, n_layer * n_head_kv] device pointers to every head's K, V
    bool kv_ptr_dirty_ = true;
    device_buffer gather_mem_, gather_idx_mem_;

    // The plan last uploaded (lo, hi [n_head_kv, n_q], concatenated extras and offsets): a layer whose
    // plan is the same (dense attention in every layer of a step) uploads nothing.
    std::vector<int32_t> plan_host_, plan_uploaded_;
    device_buffer plan_mem_;
    device_buffer tile_next_mem_;  // [n_head_kv] tile counters of split decode attention, kept at zero
    bool plan_has_extras_ = false;

    pinned_buffer host_stage_;  // large copies to the host (logits) land here first
};

template <typename T>
T * backend_cuda::upload(device_buffer & buf, const T * src, size_t n, const char * what) {
    T * p = static_cast<T *>(buf.reserve(n * sizeof(T), what));
    if (n > 0) {
        CUDA_CHECK(cudaMemcpyAsync(p, src, n * sizeof(T), cudaMemcpyHostToDevice, stream_));
    }
    return p;
}

backend_cuda::backend_cuda(const model & m) : hp_(m.hp), heads_(size_t(m.hp.n_layer) * m.hp.n_head_kv) {
    std::string why_not;
    if (!backend_cuda_supports(m, why_not)) {
        fail("device 'cuda': %s", why_not.c_str());
    }
    upload_weight(m.tok_embd, "token_embd.weight");
    upload_weight(m.output, "output.weight");
    upload_vector(m.output_norm, hp_.n_embd);
    if (m.rope_freqs != nullptr) {
        upload_vector(m.rope_freqs, hp_.n_rot / 2);
        rope_freqs_ = vectors_.at(m.rope_freqs);
    }
    const int64_t n_q  = int64_t(hp_.n_head) * hp_.head_dim;
    const int64_t n_kv = int64_t(hp_.n_head_kv) * hp_.head_dim;
    for (int il = 0; il < hp_.n_layer; ++il) {
        const layer_weights & l = m.layers[size_t(il)];
        auto name               = [il](const char * t) { return strfmt("blk.%d.%s.weight", il, t); };
        upload_weight(l.wq, name("attn_q"));
        upload_weight(l.wk, name("attn_k"));
        upload_weight(l.wv, name("attn_v"));
        upload_weight(l.wo, name("attn_output"));
        upload_weight(l.ffn_gate, name("ffn_gate"));
        upload_weight(l.ffn_up, name("ffn_up"));
        upload_weight(l.ffn_down, name("ffn_down"));
        upload_vector(l.attn_norm, hp_.n_embd);
        upload_vector(l.ffn_norm, hp_.n_embd);
        upload_vector(l.bq, n_q);
        upload_vector(l.bk, n_kv);
        upload_vector(l.bv, n_kv);
    }
#ifdef TCA_HAVE_CUBLAS
    cublas_.emplace();
#endif
    CUDA_CHECK(cudaStreamSynchronize(stream_));
}

backend_cuda::~backend_cuda() {
    for (kv_head_cuda & h : heads_) {
        cudaFreeAsync(h.k, stream_);
        cudaFreeAsync(h.v, stream_);
    }
    cudaStreamSynchronize(stream_);
}

void backend_cuda::upload_weight(const weight & w, const std::string & name) {
    if (weights_.count(w.data) > 0) {
        return;  // the tied output matrix is the embedding
    }
    qweight_cuda dw{w.type, w.n_in, w.n_out, nullptr};
    std::vector<uint16_t> f16;
    const void * src = w.data;
    if (!quant_cuda_supported(w.type)) {  // F32 or BF16 (backend_cuda_supports)
        // Float matrices run as F16 on the GPU (the matvec and matmul kernels read F16 blocks).
        dw.type = ggml_type::F16;
        f16.resize(size_t(w.n_out * w.n_in));
        std::vector<float> row(size_t(w.n_in));
        for (int64_t r = 0; r < w.n_out; ++r) {
            dequantize_row(w.type, static_cast<const uint8_t *>(w.data) + size_t(r) * w.row_bytes(),
                           row.data(), w.n_in);
            fp32_to_fp16_row(row.data(), &f16[size_t(r * w.n_in)], w.n_in);
        }
        src = f16.data();
    }
    const size_t bytes = dw.row_bytes() * size_t(w.n_out);
    weight_mem_.emplace_back();
    dw.data = weight_mem_.back().reserve(bytes, name.c_str());
    CUDA_CHECK(cudaMemcpy(const_cast<void *>(dw.data), src, bytes, cudaMemcpyHostToDevice));
    weights_.emplace(w.data, dw);
}

void backend_cuda::upload_vector(const float * v, int64_t n) {
    if (v == nullptr || vectors_.count(v) > 0) {
        return;
    }
    weight_mem_.emplace_back();
    float * d = static_cast<float *>(weight_mem_.back().reserve(size_t(n) * sizeof(float), "a norm or bias"));
    CUDA_CHECK(cudaMemcpy(d, v, size_t(n) * sizeof(float), cudaMemcpyHostToDevice));
    vectors_.emplace(v, d);
}

const qweight_cuda & backend_cuda::weight_of(const weight & w) const {
    const auto it = weights_.find(w.data);
    if (it == weights_.end()) {
        fail("device 'cuda': a weight of [%lld, %lld] was not uploaded", (long long)w.n_out,
             (long long)w.n_in);
    }
    return it->second;
}

const float * backend_cuda::vector_of(const float * v) const {
    if (v == nullptr) {
        return nullptr;
    }
    const auto it = vectors_.find(v);
    if (it == vectors_.end()) {
        fail("device 'cuda': a norm or bias vector was not uploaded");
    }
    return it->second;
}

void backend_cuda::set_positions(const int32_t * pos, int64_t n) {
    pos_.assign(pos, pos + n);
    upload(pos_mem_, pos, size_t(n), "positions");
}

void backend_cuda::get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) {
    prepared_.reset();
    const int32_t * d_ids = upload(ids_mem_, ids, size_t(n), "token ids");
    get_rows_cuda(weight_of(w), d_ids, n, out, stream_);
}

bool backend_cuda::use_matvec(int64_t n_tok) const {
#ifdef TCA_HAVE_CUBLAS
    return n_tok <= k_matvec_max_tokens;
#else
    return n_tok > 0;
#endif
}

void * backend_cuda::matvec_work(const qweight_cuda & w) {
    return matvec_work_mem_.reserve(matvec_cuda_work_bytes(w), "the matvec workspace");
}

void backend_cuda::product(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y,
                           bool add, const norm_input * next) {
    prepared_.reset();
    if (next != nullptr && next->x != y) {
        fail("matmul_add: the prepared norm input must read the product's output");
    }
    const qweight_cuda & dw = weight_of(w);
    if (use_matvec(n_tok)) {
        void * work      = matvec_work(dw);
        const int n_part = matvec_norm_parts(dw);
        float * part     = next == nullptr
                               ? nullptr
                               : static_cast<float *>(norm_part_mem_.reserve(
                                     size_t(n_tok * n_part) * sizeof(float), "the norm's partial sums"));
        for (int64_t t = 0; t < n_tok; ++t) {
            matvec_out out{dw, vector_of(bias), y + t * dw.n_out, add};
            if (next != nullptr) {
                out.norm_g = vector_of(next->g);
                out.xn     = next->xn + t * dw.n_out;
                out.part   = part + t * n_part;
            }
            matvec_multi_cuda(&out, 1, {x + t * dw.n_in}, work, stream_);
        }
        if (next != nullptr) {
            prepared_ = prepared_norm{*next, n_tok, n_part};
        }
        return;
    }
#ifdef TCA_HAVE_CUBLAS
    void * work = work_mem_.reserve(matmul_cuda_work_bytes(dw, n_tok), "the matmul workspace");
    matmul_cuda(*cublas_, dw, x, n_tok, y, add, work, stream_);
    if (bias != nullptr) {
        add_bias_cuda(y, vector_of(bias), n_tok, dw.n_out, stream_);
    }
#endif
}

matvec_in backend_cuda::deferred_norm(const norm_input & in, int64_t n_tok, int64_t n_in) {
    const bool ready = prepared_ && prepared_->in.x == in.x && prepared_->in.g == in.g &&
                       prepared_->in.eps == in.eps && prepared_->in.xn == in.xn && prepared_->n_tok == n_tok;
    int n_part       = ready ? prepared_->n_part : 1;
    prepared_.reset();
    auto * part = static_cast<float *>(
        norm_part_mem_.reserve(size_t(n_tok * n_part) * sizeof(float), "the norm's partial sums"));
    if (!ready) {
        norm_prepare_cuda(in.x, vector_of(in.g), n_tok, n_in, in.xn, part, stream_);
    }
    return {in.xn, part, n_part, in.eps};
}

void * backend_cuda::matvec_outs(const matmul_out * outs, int n, matvec_out * mv) {
    size_t work_bytes = 0;
    for (int j = 0; j < n; ++j) {
        mv[j]      = {weight_of(*outs[j].w), vector_of(outs[j].bias), outs[j].y};
        work_bytes = std::max(work_bytes, matvec_cuda_work_bytes(mv[j].w));
    }
    return matvec_work_mem_.reserve(work_bytes, "the matvec workspace");
}

void backend_cuda::matmul_multi(const matmul_out * outs, int n, const float * x, int64_t n_tok) {
    if (!use_matvec(n_tok) || n > kMatvecSegs) {
        for (int j = 0; j < n; ++j) {
            matmul(*outs[j].w, outs[j].bias, x, n_tok, outs[j].y);
        }
        return;
    }
    matvec_out mv[kMatvecSegs];
    void * work = matvec_outs(outs, n, mv);
    for (int64_t t = 0; t < n_tok; ++t) {
        for (int j = 0; j < n; ++j) {
            mv[j].y = outs[j].y + t * mv[j].w.n_out;
        }
        matvec_multi_cuda(mv, n, {x + t * mv[0].w.n_in}, work, stream_);
    }
}

void backend_cuda::ffn_swiglu(const weight & w_gate, const weight & w_up, const norm_input & in,
                              int64_t n_tok, float * gate, float * up) {
    const qweight_cuda & g = weight_of(w_gate);
    const qweight_cuda & u = weight_of(w_up);
    if (use_matvec(n_tok) && g.type == u.type) {  // the norm deferred into the matvec
        void * work        = matvec_work(g);
        const matvec_in xn = deferred_norm(in, n_tok, g.n_in);
        for (int64_t t = 0; t < n_tok; ++t) {
            matvec_swiglu_cuda(g, u, {xn.x + t * g.n_in, xn.part + t * xn.n_part, xn.n_part, xn.eps},
                               gate + t * g.n_out, work, stream_);
        }
        return;
    }
    rms_norm(in.x, in.g, in.eps, n_tok, g.n_in, in.xn);
    matmul(w_gate, nullptr, in.xn, n_tok, gate);
    matmul(w_up, nullptr, in.xn, n_tok, up);
    swiglu_cuda(gate, up, n_tok * g.n_out, stream_);
}

void backend_cuda::kv_alloc(int64_t cap, __half *& k, __half *& v) {
    const size_t bytes = size_t(cap) * size_t(hp_.head_dim) * sizeof(__half);
    k                  = static_cast<__half *>(device_alloc_async(bytes, "the KV cache", stream_));
    try {
        v = static_cast<__half *>(device_alloc_async(bytes, "the KV cache", stream_));
    } catch (...) {
        cudaFreeAsync(k, stream_);
        throw;
    }
}

void backend_cuda::kv_swap(kv_head_cuda & h, __half * k, __half * v, int64_t cap) {
    if (h.k != nullptr) {
        CUDA_CHECK(cudaFreeAsync(h.k, stream_));
        CUDA_CHECK(cudaFreeAsync(h.v, stream_));
    }
    h.k           = k;
    h.v           = v;
    h.cap         = cap;
    kv_ptr_dirty_ = true;
}

void backend_cuda::kv_reserve(kv_head_cuda & h, int64_t n_needed) {
    if (n_needed <= h.cap) {
        return;
    }
    const int64_t cap = kv_capacity(n_needed);
    const size_t row  = size_t(hp_.head_dim) * sizeof(__half);
    __half * k        = nullptr;
    __half * v        = nullptr;
    kv_alloc(cap, k, v);
    if (h.n > 0) {
        CUDA_CHECK(cudaMemcpyAsync(k, h.k, size_t(h.n) * row, cudaMemcpyDeviceToDevice, stream_));
        CUDA_CHECK(cudaMemcpyAsync(v, h.v, size_t(h.n) * row, cudaMemcpyDeviceToDevice, stream_));
    }
    kv_swap(h, k, v, cap);
    // The host positions grow with the rows. Left to double on their own, every head's vector filled by a
    // prompt of 2^k tokens would be reallocated in the same decode step: 9-10 ms for the first token after a
    // 32K prompt (256 heads).
    h.pos.reserve(size_t(cap));
}

rope_params backend_cuda::rope_of() const {
    return {hp_.head_dim,
            hp_.n_rot,
            hp_.rope_base,
            hp_.rope_scale,
            rope_freqs_,
            static_cast<const int32_t *>(pos_mem_.get()),
            hp_.rope == rope_style::adjacent};
}

kv_store_dst backend_cuda::kv_append_dst(int il, int h0, int n_heads, int64_t n) {
    kv_store_dst dst{};
    for (int j = 0; j < n_heads; ++j) {
        kv_head_cuda & h = head(il, h0 + j);
        kv_reserve(h, h.n + n);
        dst.k[j] = h.k + h.n * hp_.head_dim;
        dst.v[j] = h.v + h.n * hp_.head_dim;
    }
    return dst;
}

void backend_cuda::kv_appended(int il, int64_t n) {
    for (int ih = 0; ih < hp_.n_head_kv; ++ih) {
        kv_head_cuda & h = head(il, ih);
        h.pos.insert(h.pos.end(), pos_.begin(), pos_.begin() + n);
        h.n += n;
    }
}

void backend_cuda::rope_append(int il, float * q, float * k, const float * v, int64_t n) {
    const rope_params r = rope_of();
    for (int h0 = 0; h0 < hp_.n_head_kv; h0 += kRopeStoreHeads) {
        const int n_heads = std::min(kRopeStoreHeads, hp_.n_head_kv - h0);
        rope_store_cuda(q, h0 == 0 ? hp_.n_head : 0, k, v, n, hp_.n_head_kv, h0, n_heads, r,
                        kv_append_dst(il, h0, n_heads, n), stream_);
    }
    kv_appended(il, n);
}

void backend_cuda::qkv_rope_append(int il, const matmul_out * qkv, const norm_input & in, int64_t n_tok) {
    // One token with adjacent pairs: the Q/K/V matvec finishes its input's deferred norm, and rotates and
    // stores in its epilogue (two launches fewer per layer); otherwise the norm, the products, then
    // rope_append.
    if (n_tok != 1 || !use_matvec(n_tok) || hp_.rope != rope_style::adjacent ||
        hp_.n_head_kv > kRopeStoreHeads) {
        backend::qkv_rope_append(il, qkv, in, n_tok);
        return;
    }
    matvec_out mv[3];
    void * work = matvec_outs(qkv, 3, mv);
    matvec_qkv_rope_cuda(mv, deferred_norm(in, 1, mv[0].w.n_in), work, rope_of(),
                         kv_append_dst(il, 0, hp_.n_head_kv, 1), stream_);
    kv_appended(il, 1);
}

void backend_cuda::kv_keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) {
    kv_head_cuda & h  = head(il, ih);
    const int64_t n   = int64_t(idx.size());
    const size_t rows = size_t(n) * hp_.head_dim;
    // A head left more than one step above the capacity of what it keeps moves its kept rows into a buffer
    // of that capacity (the gather writes there directly); otherwise they are gathered into scratch and
    // copied back in place. Decode drops a few tokens per compaction, so it shrinks a head only once a
    // step's worth is dropped.
    const int64_t cap = kv_capacity(n);
    const bool shrink = h.cap - cap > k_kv_step;
    const int32_t * d_idx =
        n > 0 ? upload(gather_idx_mem_, idx.data(), idx.size(), "the KV keep list") : nullptr;
    __half * k_out = nullptr;
    __half * v_out = nullptr;
    if (shrink && cap > 0) {
        kv_alloc(cap, k_out, v_out);
    } else if (!shrink && n > 0) {
        k_out = static_cast<__half *>(gather_mem_.reserve(2 * rows * sizeof(__half), "the KV compaction"));
        v_out = k_out + rows;
    }
    if (n > 0) {
        kv_gather_kernel<<<unsigned(ceil_div(int64_t(rows), 256)), 256, 0, stream_>>>(
            h.k, h.v, d_idx, n, hp_.head_dim, k_out, v_out);
        CUDA_CHECK_LAUNCH("kv_gather_kernel");
        if (!shrink) {
            CUDA_CHECK(cudaMemcpyAsync(h.k, k_out, rows * sizeof(__half), cudaMemcpyDeviceToDevice, stream_));
            CUDA_CHECK(cudaMemcpyAsync(h.v, v_out, rows * sizeof(__half), cudaMemcpyDeviceToDevice, stream_));
        }
    }
    if (shrink) {
        kv_swap(h, k_out, v_out, cap);
    }
    std::vector<int32_t> pos(idx.size());
    for (size_t j = 0; j < idx.size(); ++j) {
        pos[j] = h.pos[size_t(idx[j])];
    }
    h.pos      = std::move(pos);
    h.n        = n;
    h.n_global = n_global;
}

void backend_cuda::kv_clear() {
    for (kv_head_cuda & h : heads_) {
        kv_swap(h, nullptr, nullptr, 0);
        h.n        = 0;
        h.n_global = 0;
        h.pos      = std::vector<int32_t>();
    }
    gather_mem_.release();
    trim_memory_pool(stream_);  // the freed cache goes back to the device, not just to the pool
}

size_t backend_cuda::kv_bytes() const {
    size_t bytes = 0;
    for (const kv_head_cuda & h : heads_) {
        bytes += size_t(h.cap) * (2 * size_t(hp_.head_dim) * sizeof(__half) + sizeof(int32_t));
    }
    return bytes;
}

void backend_cuda::upload_plans(const attn_plan * plans, int64_t n_q) {
    // Layout: lo [n_head_kv, n_q], hi [n_head_kv, n_q], extra_offset [n_head_kv + 1], extras.
    const int n_kv = hp_.n_head_kv;
    plan_host_.resize(size_t(2 * n_kv * n_q + n_kv + 1));
    int32_t * lo  = plan_host_.data();
    int32_t * hi  = lo + n_kv * n_q;
    int32_t * off = hi + n_kv * n_q;
    off[0]        = 0;
    for (int ih = 0; ih < n_kv; ++ih) {
        const attn_plan & p = plans[ih];
        for (int64_t i = 0; i < n_q; ++i) {
            lo[ih * n_q + i] = int32_t(p.lo[size_t(i)]);
            hi[ih * n_q + i] = int32_t(p.hi[size_t(i)]);
        }
        off[ih + 1] = off[ih] + int32_t(p.extra.size());
    }
    plan_has_extras_ = off[n_kv] > 0;
    for (int ih = 0; ih < n_kv; ++ih) {
        plan_host_.insert(plan_host_.end(), plans[ih].extra.begin(), plans[ih].extra.end());
    }
    if (plan_host_ != plan_uploaded_) {
        upload(plan_mem_, plan_host_.data(), plan_host_.size(), "the attention plan");
        plan_uploaded_ = plan_host_;
    }
}

void backend_cuda::attention(int il, const float * q, int64_t n_q, const attn_plan * plans, float * out) {
    const int n_kv = hp_.n_head_kv;
    if (kv_ptr_dirty_) {
        std::vector<const __half *> ptrs(2 * heads_.size());
        for (size_t j = 0; j < heads_.size(); ++j) {
            ptrs[j]                 = heads_[j].k;
            ptrs[heads_.size() + j] = heads_[j].v;
        }
        upload(kv_ptr_mem_, ptrs.data(), ptrs.size(), "the KV pointers");
        kv_ptr_dirty_ = false;
    }
    upload_plans(plans, n_q);
    const auto * ptrs   = static_cast<const __half * const *>(kv_ptr_mem_.get());
    const auto * d_plan = static_cast<const int32_t *>(plan_mem_.get());
    int64_t n_keys_max  = 0;
    int64_t n_keys_min  = head(il, 0).n;
    for (int ih = 0; ih < n_kv; ++ih) {
        n_keys_max = std::max(n_keys_max, head(il, ih).n);
        n_keys_min = std::min(n_keys_min, head(il, ih).n);
    }
    attn_cuda_params p{};
    p.n_head       = hp_.n_head;
    p.n_head_kv    = n_kv;
    p.head_dim     = hp_.head_dim;
    p.scale        = 1.0f / std::sqrt(float(hp_.head_dim));
    p.n_q          = n_q;
    p.q            = q;
    p.out          = out;
    p.k            = ptrs + size_t(il) * n_kv;
    p.v            = ptrs + heads_.size() + size_t(il) * n_kv;
    p.lo           = d_plan;
    p.hi           = d_plan + n_kv * n_q;
    p.extra_offset = plan_has_extras_ ? d_plan + 2 * n_kv * n_q : nullptr;
    p.extra        = plan_has_extras_ ? d_plan + 2 * n_kv * n_q + n_kv + 1 : nullptr;
    p.n_keys_max   = n_keys_max;
    p.n_stable     = std::max<int64_t>(0, n_keys_min - n_q);  // rope_append wrote the n_q newest rows
    p.n_split      = 0;
    p.work = static_cast<float *>(work_mem_.reserve(attention_cuda_work_bytes(p), "the attention workspace"));
    if (tile_next_mem_.get() == nullptr) {  // zeroed once: every launch leaves its counters at zero
        const size_t bytes = size_t(n_kv) * sizeof(int);
        CUDA_CHECK(
            cudaMemsetAsync(tile_next_mem_.reserve(bytes, "the attention tile counters"), 0, bytes, stream_));
    }
    p.tile_next = static_cast<int *>(tile_next_mem_.get());
    attention_cuda(p, stream_);
}

void backend_cuda::group_probs(int il, int ih, const float * q, int n_group, int64_t norm_begin,
                               int64_t norm_end, int64_t out_begin, int64_t out_end, float * out) {
    const size_t n_out = size_t(std::max<int64_t>(0, out_end - out_begin));
    auto * d_out       = static_cast<float *>(probs_mem_.reserve(n_out * sizeof(float), "the TCA scores"));
    auto * work        = static_cast<float *>(probs_work_mem_.reserve(
        attention_group_probs_work_bytes(n_group, norm_begin, norm_end), "the TCA score workspace"));
    attention_group_probs_cuda(q, n_group, hp_.head_dim, 1.0f / std::sqrt(float(hp_.head_dim)),
                               head(il, ih).k, norm_begin, norm_end, out_begin, out_end, d_out, work,
                               stream_);
    CUDA_CHECK(cudaMemcpyAsync(out, d_out, n_out * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// Large copies (a token's logits: 0.5 MB for a 128K vocabulary) go through page-locked memory: a copy
// into pageable memory is staged by the driver in chunks, and the GPU idles until the host has the logits.
void backend_cuda::to_host(const float * src, size_t n, float * dst) {
    const size_t bytes = n * sizeof(float);
    void * stage = bytes >= (size_t(64) << 10) ? host_stage_.reserve(bytes, "the host copy stage") : nullptr;
    CUDA_CHECK(cudaMemcpyAsync(stage ? stage : dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (stage) {
        std::memcpy(dst, stage, bytes);
    }
}

}  // namespace

bool backend_cuda_probe(std::string & why_not) {
    int n                 = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        why_not =
            strfmt("no usable CUDA driver or GPU (%s: %s)", cudaGetErrorName(err), cudaGetErrorString(err));
        return false;
    }
    if (n == 0) {
        why_not = "no CUDA GPU is present";
        return false;
    }
    return true;
}

bool backend_cuda_supports(const model & m, std::string & why_not) {
    if (m.hp.head_dim != 64 && m.hp.head_dim != 128) {
        why_not = strfmt("head_dim %d is not supported by the CUDA attention (64 or 128)", m.hp.head_dim);
        return false;
    }
    auto readable = [&](const weight & w, const std::string & name) {
        if (quant_cuda_supported(w.type) || w.type == ggml_type::F32 || w.type == ggml_type::BF16) {
            return true;
        }
        why_not = strfmt("%s has type %s, which the CUDA kernels do not read", name.c_str(),
                         ggml_traits(w.type).name);
        return false;
    };
    if (!readable(m.tok_embd, "token_embd.weight") || !readable(m.output, "output.weight")) {
        return false;
    }
    for (int il = 0; il < m.hp.n_layer; ++il) {
        const layer_weights & l                            = m.layers[size_t(il)];
        const std::pair<const weight *, const char *> ws[] = {
            {&l.wq, "attn_q"},        {&l.wk, "attn_k"},         {&l.wv, "attn_v"},
            {&l.wo, "attn_output"},   {&l.ffn_gate, "ffn_gate"}, {&l.ffn_up, "ffn_up"},
            {&l.ffn_down, "ffn_down"}};
        for (const auto & [w, t] : ws) {
            if (!readable(*w, strfmt("blk.%d.%s.weight", il, t))) {
                return false;
            }
        }
    }
    return true;
}

std::unique_ptr<backend> backend_cuda_create(const model & m) {
    return std::make_unique<backend_cuda>(m);
}

}  // namespace tca
