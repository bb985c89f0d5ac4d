// The KV cache: one growable store per (layer, KV head), each with its own length, so that TCA can keep
// a different set of tokens per head. Keys are cached after RoPE, so dropping tokens never requires
// re-rotating; positions are absolute.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tca {

// One (layer, KV head). Entries are kept in position order: [0, n_global) are tokens compacted by TCA
// (kept for good); [n_global, n) is the recent region not yet compacted (all of it in dense mode).
struct kv_head {
    std::vector<uint16_t> k;    // [capacity, head_dim] fp16
    std::vector<uint16_t> v;    // [capacity, head_dim] fp16
    std::vector<int32_t>  pos;  // [capacity] absolute positions
    int64_t               n        = 0;
    int64_t               n_global = 0;

    int64_t n_recent() const { return n - n_global; }
};

class kv_cache {
  public:
    kv_cache(int n_layer, int n_head_kv, int head_dim);

    kv_head &       head(int il, int ih) { return heads_[size_t(il) * n_head_kv_ + ih]; }
    const kv_head & head(int il, int ih) const { return heads_[size_t(il) * n_head_kv_ + ih]; }

    // Appends n rows to one head. k, v: [n, row_stride] fp32, the head's slice starting at the pointer.
    void append(int il, int ih, const float * k, const float * v, int64_t row_stride, const int32_t * pos,
                int64_t n);

    // Keeps only the entries listed (sorted, unique indices into the head), marks the first n_global of
    // them as compacted, and releases memory the head no longer needs.
    void keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global);

    void clear();

    int     n_layer() const { return n_layer_; }
    int     n_head_kv() const { return n_head_kv_; }
    int     head_dim() const { return head_dim_; }
    int64_t n_tokens(int il) const;     // summed over the layer's KV heads
    int64_t n_tokens() const;           // summed over every head
    size_t  bytes_allocated() const;    // what the cache really holds in memory (K, V and positions)
    size_t  bytes_per_token() const;    // per (layer, KV head) token: K + V + position

  private:
    void reserve(kv_head & h, int64_t n_needed);

    int                  n_layer_;
    int                  n_head_kv_;
    int                  head_dim_;
    std::vector<kv_head> heads_;  // [n_layer * n_head_kv]
};

}  // namespace tca
