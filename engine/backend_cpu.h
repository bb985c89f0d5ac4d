// The CPU backend: activations in host vectors, the KV cache of engine/kv_cache.h, and the CPU kernels
// (engine/matmul.h, engine/ops.h, engine/attention.h) on a thread pool.
#pragma once

#include <array>
#include <vector>

#include "backend.h"
#include "kv_cache.h"
#include "model.h"
#include "ops.h"
#include "thread_pool.h"

namespace tca {

class backend_cpu final : public backend {
  public:
    backend_cpu(const model & m, int n_threads);

    const char * name() const override { return "cpu"; }
    float * buffer(act_buffer id, size_t n) override;
    void set_positions(const int32_t * pos, int64_t n) override;

    void get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) override;
    void rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                  float * out) override;
    void matmul(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y) override;
    void matmul_add(const weight & w, const float * x, int64_t n_tok, float * y,
                    const norm_input * next) override;
    void matmul_multi(const matmul_out * outs, int n, const float * x, int64_t n_tok) override;
    void ffn_swiglu(const weight & w_gate, const weight & w_up, const norm_input & in, int64_t n_tok,
                    float * gate, float * up) override;
    void rope_append(int il, float * q, float * k, const float * v, int64_t n) override;

    kv_head_view kv_view(int il, int ih) const override;
    void kv_keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) override;
    void kv_clear() override { cache_.clear(); }
    size_t kv_bytes() const override { return cache_.bytes_allocated(); }

    void attention(int il, const float * q, int64_t n_q, const attn_plan * plans, float * out) override;
    void group_probs(int il, int ih, const float * q, int n_group, int64_t norm_begin, int64_t norm_end,
                     int64_t out_begin, int64_t out_end, float * out) override;

    void to_host(const float * src, size_t n, float * dst) override;

  private:
    const model & model_;
    thread_pool pool_;
    kv_cache cache_;
    std::vector<int32_t> pos_;  // [n] positions of the current eval
    rope_table rope_;           // their RoPE angles
    std::array<std::vector<float>, size_t(act_buffer::count)> buffers_;
    std::vector<float> product_;  // matmul_add's product before it is added
};

}  // namespace tca
