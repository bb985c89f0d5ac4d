// The one interface the forward pass (engine/context.cpp) runs on: every operation that touches
// activations or the KV cache. A backend holds the activations, the KV cache of one sequence and whatever
// copy of the weights it needs; the forward pass passes the model's weight views and the buffers the
// backend gave it. Pointers from buffer() live in the backend's memory (host or device) and are only
// ever offset by the caller, never dereferenced.
//
// Implementations: engine/backend_cpu.h (the CPU kernels) and cuda/backend_cuda.cuh (the CUDA kernels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention.h"
#include "matmul.h"

namespace tca {

struct model;

// Activation buffers of one eval call (context.cpp).
enum class act_buffer { x, xn, q, k, v, attn, gate, up, logits, count };

// What the host knows of one (layer, KV head) of the cache: entries [0, n_global) are compacted by TCA,
// pos [n] their absolute positions (host memory, valid until the next cache change).
struct kv_head_view {
    int64_t n           = 0;
    int64_t n_global    = 0;
    const int32_t * pos = nullptr;
};

// One product of backend::matmul_multi: y = w x + bias (bias may be null).
struct matmul_out {
    const weight * w;
    const float * bias;
    float * y;
};

// The input of a product that starts with an RMS norm: the rows rms_norm(x) * g (backend::rms_norm's rule)
// of x [n_tok, n_in]. xn [n_tok, n_in] is the backend's scratch for them, in whatever form it reads.
struct norm_input {
    const float * x;
    const float * g;
    float eps;
    float * xn;
};

class backend {
  public:
    virtual ~backend() = default;

    virtual const char * name() const = 0;  // "cpu" or "cuda"

    // A buffer of at least n floats; its contents are undefined after a call that grows it.
    virtual float * buffer(act_buffer id, size_t n) = 0;

    // The absolute positions pos [n] of the tokens of the current eval (used by rope_append).
    virtual void set_positions(const int32_t * pos, int64_t n) = 0;

    // out[t, :] = row ids[t] of w; ids [n] in host memory, ids checked by the caller.
    virtual void get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) = 0;
    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * g;  x, out [n_rows, n_cols] (may alias)
    virtual void rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                          float * out) = 0;
    // y[t, o] = sum_i w[o, i] * x[t, i] + bias[o];  x [n_tok, n_in], y [n_tok, n_out]; bias may be null.
    virtual void matmul(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y) = 0;
    // y[t, o] += sum_i w[o, i] * x[t, i]: a product added to the residual stream y [n_tok, n_out]. next, when
    // not null, is the norm input {y, g, eps, xn} that the next call reads, y and xn unchanged in between: a
    // backend may prepare it here (CUDA generation writes the norm's pieces in this product's epilogue, so
    // that the norm costs no kernel).
    virtual void matmul_add(const weight & w, const float * x, int64_t n_tok, float * y,
                            const norm_input * next) = 0;
    // The products outs [n] of one input x [n_tok, n_in] (Q, K and V): each as matmul; a backend may run
    // them together.
    virtual void matmul_multi(const matmul_out * outs, int n, const float * x, int64_t n_tok) = 0;
    // gate = silu(w_gate xn) * (w_up xn) with xn the rows of in [n_tok, n_in]; gate [n_tok, n_ff], up
    // [n_tok, n_ff] is scratch.
    virtual void ffn_swiglu(const weight & w_gate, const weight & w_up, const norm_input & in, int64_t n_tok,
                            float * gate, float * up) = 0;
    // Rotates q [n, n_head, head_dim] and k [n, n_head_kv, head_dim] in place at the positions of
    // set_positions (the model's RoPE), then appends k and v [n, n_head_kv, head_dim] to every KV head of
    // layer il at those positions.
    virtual void rope_append(int il, float * q, float * k, const float * v, int64_t n) = 0;
    // The RMS norm of in, matmul_multi of the Q, K and V products qkv [3] of its rows, then rope_append of
    // their outputs: one call, so that a backend may fuse them (CUDA generation finishes the norm in the
    // matvec, and rotates and stores in its epilogue).
    virtual void qkv_rope_append(int il, const matmul_out * qkv, const norm_input & in, int64_t n_tok) {
        rms_norm(in.x, in.g, in.eps, n_tok, qkv[0].w->n_in, in.xn);
        matmul_multi(qkv, 3, in.xn, n_tok);
        rope_append(il, qkv[0].y, qkv[1].y, qkv[2].y, n_tok);
    }

    virtual kv_head_view kv_view(int il, int ih) const = 0;
    // Keeps only the entries idx (sorted, unique) of one head; the first n_global are compacted.
    virtual void kv_keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) = 0;
    virtual void kv_clear()                                                                  = 0;
    virtual size_t kv_bytes() const = 0;  // what the cache holds in memory

    // out [n_q, n_head, head_dim] = attention of q [n_q, n_head, head_dim] over layer il's cache, query
    // rows of KV head ih attending as plans[ih] says (engine/attention.h).
    virtual void attention(int il, const float * q, int64_t n_q, const attn_plan * plans, float * out) = 0;
    // TCA scores (attention_group_probs in engine/attention.h) of the query rows q [n_group, head_dim]
    // against head (il, ih); out [out_end - out_begin] in host memory.
    virtual void group_probs(int il, int ih, const float * q, int n_group, int64_t norm_begin,
                             int64_t norm_end, int64_t out_begin, int64_t out_end, float * out) = 0;

    // Copies n floats of backend memory to the host.
    virtual void to_host(const float * src, size_t n, float * dst) = 0;
};

// Which backend a context runs on: "cpu", "cuda", or "auto" (the GPU when this build has CUDA, a GPU is
// present and the CUDA kernels handle the model; the CPU otherwise). Throws tca::error for another name,
// or "cuda" without a CUDA build, GPU or driver, or for a model the CUDA kernels do not handle.
std::unique_ptr<backend> backend_create(const std::string & device, const model & m, int n_threads);

// Whether this build has the CUDA backend and a usable GPU is present.
bool backend_cuda_available();

}  // namespace tca
