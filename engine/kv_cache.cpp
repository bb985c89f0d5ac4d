#include "kv_cache.h"

#include <algorithm>

#include "fp16.h"

namespace tca {

// Heads grow in steps of this many tokens, so appending one token at a time does not reallocate, and
// a compacted head gives back all but less than one step of slack.
static constexpr int64_t k_grow_step = 64;

kv_cache::kv_cache(int n_layer, int n_head_kv, int head_dim)
    : n_layer_(n_layer), n_head_kv_(n_head_kv), head_dim_(head_dim), heads_(size_t(n_layer) * n_head_kv) {}

void kv_cache::reserve(kv_head & h, int64_t n_needed) {
    const int64_t cap = int64_t(h.pos.size());
    if (n_needed <= cap) {
        return;
    }
    const int64_t new_cap = (n_needed + k_grow_step - 1) / k_grow_step * k_grow_step;
    h.k.resize(size_t(new_cap) * head_dim_);
    h.v.resize(size_t(new_cap) * head_dim_);
    h.pos.resize(size_t(new_cap));
}

void kv_cache::append(int il, int ih, const float * k, const float * v, int64_t row_stride,
                      const int32_t * pos, int64_t n) {
    kv_head & h = head(il, ih);
    reserve(h, h.n + n);
    for (int64_t i = 0; i < n; ++i) {
        fp32_to_fp16_row(k + i * row_stride, &h.k[size_t(h.n + i) * head_dim_], head_dim_);
        fp32_to_fp16_row(v + i * row_stride, &h.v[size_t(h.n + i) * head_dim_], head_dim_);
        h.pos[size_t(h.n + i)] = pos[i];
    }
    h.n += n;
}

void kv_cache::keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) {
    kv_head &     h = head(il, ih);
    const size_t  d = size_t(head_dim_);
    int64_t       j = 0;
    for (int32_t i : idx) {
        if (i != j) {  // idx is sorted and unique, so i >= j and rows move only towards the front
            std::copy_n(&h.k[size_t(i) * d], d, &h.k[size_t(j) * d]);
            std::copy_n(&h.v[size_t(i) * d], d, &h.v[size_t(j) * d]);
            h.pos[size_t(j)] = h.pos[size_t(i)];
        }
        ++j;
    }
    h.n        = j;
    h.n_global = n_global;
    const int64_t cap = (h.n + k_grow_step - 1) / k_grow_step * k_grow_step;
    if (cap < int64_t(h.pos.size())) {
        h.k.resize(size_t(cap) * d);
        h.v.resize(size_t(cap) * d);
        h.pos.resize(size_t(cap));
        h.k.shrink_to_fit();
        h.v.shrink_to_fit();
        h.pos.shrink_to_fit();
    }
}

void kv_cache::clear() {
    for (kv_head & h : heads_) {
        h = kv_head{};
    }
}

int64_t kv_cache::n_tokens(int il) const {
    int64_t n = 0;
    for (int ih = 0; ih < n_head_kv_; ++ih) {
        n += head(il, ih).n;
    }
    return n;
}

int64_t kv_cache::n_tokens() const {
    int64_t n = 0;
    for (const kv_head & h : heads_) {
        n += h.n;
    }
    return n;
}

size_t kv_cache::bytes_per_token() const {
    return 2 * size_t(head_dim_) * sizeof(uint16_t) + sizeof(int32_t);
}

size_t kv_cache::bytes_allocated() const {
    size_t bytes = 0;
    for (const kv_head & h : heads_) {
        bytes += h.k.capacity() * sizeof(uint16_t) + h.v.capacity() * sizeof(uint16_t) +
                 h.pos.capacity() * sizeof(int32_t);
    }
    return bytes;
}

}  // namespace tca
