#include "backend_cpu.h"

#include <algorithm>
#include <cmath>

namespace tca {

backend_cpu::backend_cpu(const model & m, int n_threads)
    : model_(m), pool_(n_threads), cache_(m.hp.n_layer, m.hp.n_head_kv, m.hp.head_dim) {}

float * backend_cpu::buffer(act_buffer id, size_t n) {
    std::vector<float> & b = buffers_[size_t(id)];
    if (b.size() < n) {
        b.resize(n);
    }
    return b.data();
}

void backend_cpu::set_positions(const int32_t * pos, int64_t n) {
    const hparams & hp = model_.hp;
    pos_.assign(pos, pos + n);
    rope_table_init(rope_, pos, n, hp.n_rot, hp.rope_base, hp.rope_scale, model_.rope_freqs);
}

void backend_cpu::get_rows(const weight & w, const int32_t * ids, int64_t n, float * out) {
    tca::get_rows(w, ids, n, out);
}

void backend_cpu::rms_norm(const float * x, const float * g, float eps, int64_t n_rows, int64_t n_cols,
                           float * out) {
    op_rms_norm(x, g, eps, n_rows, n_cols, out, pool_);
}

void backend_cpu::matmul(const weight & w, const float * bias, const float * x, int64_t n_tok, float * y) {
    tca::matmul(w, x, n_tok, y, pool_);
    if (bias != nullptr) {
        op_add_bias(y, bias, n_tok, w.n_out);
    }
}

void backend_cpu::matmul_add(const weight & w, const float * x, int64_t n_tok, float * y,
                             const norm_input * /*next: the consumer normalises*/) {
    product_.resize(size_t(n_tok * w.n_out));
    tca::matmul(w, x, n_tok, product_.data(), pool_);
    op_add(y, product_.data(), n_tok * w.n_out);
}

void backend_cpu::matmul_multi(const matmul_out * outs, int n, const float * x, int64_t n_tok) {
    for (int j = 0; j < n; ++j) {
        matmul(*outs[j].w, outs[j].bias, x, n_tok, outs[j].y);
    }
}

void backend_cpu::ffn_swiglu(const weight & w_gate, const weight & w_up, const norm_input & in, int64_t n_tok,
                             float * gate, float * up) {
    op_rms_norm(in.x, in.g, in.eps, n_tok, w_gate.n_in, in.xn, pool_);
    tca::matmul(w_gate, in.xn, n_tok, gate, pool_);
    tca::matmul(w_up, in.xn, n_tok, up, pool_);
    op_swiglu(gate, up, n_tok * w_gate.n_out, pool_);
}

void backend_cpu::rope_append(int il, float * q, float * k, const float * v, int64_t n) {
    const hparams & hp      = model_.hp;
    const bool adjacent     = hp.rope == rope_style::adjacent;
    const int64_t kv_stride = int64_t(hp.n_head_kv) * hp.head_dim;
    op_rope(q, n, hp.n_head, hp.head_dim, rope_, adjacent);
    op_rope(k, n, hp.n_head_kv, hp.head_dim, rope_, adjacent);
    for (int ih = 0; ih < hp.n_head_kv; ++ih) {
        cache_.append(il, ih, k + ih * hp.head_dim, v + ih * hp.head_dim, kv_stride, pos_.data(), n);
    }
}

kv_head_view backend_cpu::kv_view(int il, int ih) const {
    const tca::kv_head & h = cache_.head(il, ih);
    return {h.n, h.n_global, h.pos.data()};
}

void backend_cpu::kv_keep(int il, int ih, const std::vector<int32_t> & idx, int64_t n_global) {
    cache_.keep(il, ih, idx, n_global);
}

void backend_cpu::attention(int il, const float * q, int64_t n_q, const attn_plan * plans, float * out) {
    const hparams & hp = model_.hp;
    attn_params p;
    p.n_head    = hp.n_head;
    p.n_head_kv = hp.n_head_kv;
    p.head_dim  = hp.head_dim;
    p.scale     = 1.0f / std::sqrt(float(hp.head_dim));
    p.n_q       = n_q;
    p.q         = q;
    p.out       = out;
    attention_cpu(p, &cache_.head(il, 0), plans, pool_);
}

void backend_cpu::group_probs(int il, int ih, const float * q, int n_group, int64_t norm_begin,
                              int64_t norm_end, int64_t out_begin, int64_t out_end, float * out) {
    const int head_dim = model_.hp.head_dim;
    attention_group_probs(q, n_group, head_dim, 1.0f / std::sqrt(float(head_dim)), cache_.head(il, ih),
                          norm_begin, norm_end, out_begin, out_end, out);
}

void backend_cpu::to_host(const float * src, size_t n, float * dst) {
    std::copy_n(src, n, dst);
}

}  // namespace tca
