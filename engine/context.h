// An inference context: the KV cache of one sequence and the forward pass that fills it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <string>

#include "attention.h"
#include "backend.h"
#include "model.h"
#include "tca_config.h"
#include "tca_runtime.h"

namespace tca {

enum class attention_mode { dense, tca };

struct context_params {
    int n_ctx                = 4096;
    int n_threads            = 0;      // 0: all cores
    std::string device       = "cpu";  // "cpu", "cuda" or "auto" (backend_create)
    int n_batch              = 512;    // tokens per matrix product in prompt processing
    attention_mode attention = attention_mode::dense;
    tca_overrides tca;  // with attention == tca: run-time b, w, alpha, uniform density
};

class context {
  public:
    context(const model & m, const context_params & params);

    // Runs tokens [n] at positions n_past() ... and appends them to the cache. logits (the caller's, so that
    // generation allocates nothing per token): [n_vocab] for the last token, or [n, n_vocab] when
    // logits_all. Throws before touching the cache when the tokens do not fit in n_ctx or an id is out of
    // range.
    void eval(const int32_t * tokens, int64_t n, bool logits_all, float * logits);

    void reset();

    // Called in every layer of eval with the post-RoPE queries q [n, n_head, head_dim] and keys
    // k [n, n_head_kv, head_dim] of the tokens being evaluated, in host memory (calibration collects its
    // statistics here).
    using layer_hook = std::function<void(int il, const float * q, const float * k, int64_t n)>;
    void set_layer_hook(layer_hook hook) { hook_ = std::move(hook); }

    const model & get_model() const { return model_; }
    int64_t n_past() const { return n_past_; }
    int n_ctx() const { return params_.n_ctx; }
    int n_threads() const { return n_threads_; }
    const char * device() const { return backend_->name(); }
    bool tca_enabled() const { return params_.attention == attention_mode::tca; }
    const tca_config & tca() const { return tca_; }

    // The KV cache: one head's entries, tokens held (per layer or in all), bytes held, bytes per token.
    kv_head_view kv_view(int il, int ih) const { return backend_->kv_view(il, ih); }
    int64_t kv_n_tokens(int il) const;
    int64_t kv_n_tokens() const;
    size_t kv_bytes() const { return backend_->kv_bytes(); }
    size_t kv_bytes_per_token() const;  // per (layer, KV head) token: fp16 K + V and its position

  private:
    // Activations of one eval call, in the backend's memory (context.cpp sizes them per call).
    struct activations {
        float * x;     // [n, n_embd] residual stream
        float * xn;    // [n, n_embd] a block's normalised input, in the backend's form (norm_input)
        float * q;     // [n, n_head, head_dim]
        float * k;     // [n, n_head_kv, head_dim]
        float * v;     // [n, n_head_kv, head_dim]
        float * attn;  // [n, n_head, head_dim]
        float * gate;  // [n_batch, n_ff]
        float * up;    // [n_batch, n_ff]
    };

    // The forward pass of eval, after its checks; leaves n_past_ to the caller.
    void forward(const int32_t * tokens, int64_t n, bool logits_all, float * logits);
    void attention_layer(int il, int64_t n, const activations & a);
    void call_hook(int il, int64_t n, const activations & a);

    const model & model_;
    context_params params_;
    int n_threads_;
    std::unique_ptr<backend> backend_;
    tca_config tca_;  // resolved settings when attention == tca
    layer_hook hook_;
    int64_t n_past_ = 0;

    std::vector<attn_plan> plans_;        // [n_head_kv]
    std::vector<tca_keep> keeps_;         // [n_head_kv]
    std::vector<float> hook_q_, hook_k_;  // host copies for the hook when the backend is not the CPU
};

}  // namespace tca
