// An inference context: the KV cache of one sequence and the forward pass that fills it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "attention.h"
#include "kv_cache.h"
#include "model.h"
#include "tca_config.h"
#include "tca_runtime.h"
#include "thread_pool.h"

namespace tca {

enum class attention_mode { dense, tca };

struct context_params {
    int            n_ctx     = 4096;
    int            n_threads = 0;    // 0: all cores
    int            n_batch   = 512;  // tokens per matrix product in prompt processing
    attention_mode attention = attention_mode::dense;
    tca_overrides  tca;  // with attention == tca: run-time b, w, alpha, uniform density
};

class context {
  public:
    context(const model & m, const context_params & params);

    // Runs tokens [n] at positions n_past() ... and appends them to the cache. logits: [n_vocab] for the
    // last token, or [n, n_vocab] when logits_all. Throws before touching the cache when the tokens do
    // not fit in n_ctx or an id is out of range.
    void eval(const int32_t * tokens, int64_t n, bool logits_all, std::vector<float> & logits);

    void reset();

    // Called in every layer of eval with the post-RoPE queries q [n, n_head, head_dim] and keys
    // k [n, n_head_kv, head_dim] of the tokens being evaluated (calibration collects its statistics here).
    using layer_hook = std::function<void(int il, const float * q, const float * k, int64_t n)>;
    void set_layer_hook(layer_hook hook) { hook_ = std::move(hook); }

    int64_t          n_past() const { return n_past_; }
    int              n_ctx() const { return params_.n_ctx; }
    int              n_threads() const { return pool_.size(); }
    const kv_cache & cache() const { return cache_; }
    bool             tca_enabled() const { return params_.attention == attention_mode::tca; }
    const tca_config & tca() const { return tca_; }

  private:
    void attention_layer(int il, int64_t n, const int32_t * pos);

    const model &  model_;
    context_params params_;
    thread_pool    pool_;
    kv_cache       cache_;
    tca_config     tca_;  // resolved settings when attention == tca
    layer_hook     hook_;
    int64_t        n_past_ = 0;

    // Activations of one eval call, kept between calls to avoid reallocation.
    std::vector<float> x_;     // [n, n_embd] residual stream
    std::vector<float> xn_;    // [n, n_embd] normalised input of a block
    std::vector<float> q_;     // [n, n_head, head_dim]
    std::vector<float> k_;     // [n, n_head_kv, head_dim]
    std::vector<float> v_;     // [n, n_head_kv, head_dim]
    std::vector<float> attn_;  // [n, n_head, head_dim]
    std::vector<float> gate_;  // [n_batch, n_ff]
    std::vector<float> up_;    // [n_batch, n_ff]
    std::vector<attn_plan> plans_;  // [n_head_kv]
    std::vector<tca_keep>  keeps_;  // [n_head_kv]
};

}  // namespace tca
