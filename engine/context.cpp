#include "context.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "common.h"
#include "ops.h"

namespace tca {

namespace {

int default_threads(int n_threads) {
    if (n_threads > 0) {
        return n_threads;
    }
    return std::max(1, int(std::thread::hardware_concurrency()));
}

}  // namespace

context::context(const model & m, const context_params & params)
    : model_(m),
      params_(params),
      pool_(default_threads(params.n_threads)),
      cache_(m.hp.n_layer, m.hp.n_head_kv, m.hp.head_dim),
      plans_(size_t(m.hp.n_head_kv)),
      keeps_(size_t(m.hp.n_head_kv)) {
    if (m.layers.empty()) {
        fail("cannot create a context on a vocab-only model");
    }
    if (params_.n_ctx <= 0) {
        params_.n_ctx = m.hp.n_ctx_train;
    }
    if (params_.n_batch <= 0) {
        fail("n_batch must be positive (got %d)", params_.n_batch);
    }
    if (tca_enabled()) {
        tca_ = tca_config_resolve(m.has_tca ? &m.tca : nullptr, m.hp.n_layer, m.hp.n_head_kv, params_.tca);
    }
}

void context::reset() {
    cache_.clear();
    n_past_ = 0;
}

void context::attention_layer(int il, int64_t n, const int32_t * pos) {
    const hparams & hp        = model_.hp;
    const int64_t   kv_stride = int64_t(hp.n_head_kv) * hp.head_dim;
    const int       n_group   = hp.n_head / hp.n_head_kv;
    const float     scale     = 1.0f / std::sqrt(float(hp.head_dim));
    // The query rows of KV head ih's group at the chunk's last token: [n_group, head_dim].
    auto q_last = [&](int ih) { return &q_[(size_t(n - 1) * hp.n_head + size_t(ih) * n_group) * hp.head_dim]; };

    for (int ih = 0; ih < hp.n_head_kv; ++ih) {
        cache_.append(il, ih, &k_[size_t(ih) * hp.head_dim], &v_[size_t(ih) * hp.head_dim], kv_stride, pos, n);
        const kv_head & h = cache_.head(il, ih);
        keeps_[size_t(ih)].changed = false;
        if (tca_enabled() && n > 1) {
            tca_plan_prefill(tca_, tca_.head_p(il, ih, hp.n_head_kv), h, n, q_last(ih), n_group, hp.head_dim,
                             scale, plans_[size_t(ih)], keeps_[size_t(ih)]);
        } else {
            plan_dense(h, n, plans_[size_t(ih)]);
        }
    }

    attn_params p;
    p.n_head    = hp.n_head;
    p.n_head_kv = hp.n_head_kv;
    p.head_dim  = hp.head_dim;
    p.scale     = scale;
    p.n_q       = n;
    p.q         = q_.data();
    p.out       = attn_.data();
    attention_cpu(p, &cache_.head(il, 0), plans_.data(), pool_);

    if (!tca_enabled()) {
        return;
    }
    for (int ih = 0; ih < hp.n_head_kv; ++ih) {
        tca_keep & keep = keeps_[size_t(ih)];
        if (n == 1) {
            tca_decode_compact(tca_, tca_.head_p(il, ih, hp.n_head_kv), cache_.head(il, ih), q_last(ih), n_group,
                               hp.head_dim, scale, keep);
        }
        if (keep.changed) {
            cache_.keep(il, ih, keep.keep, keep.n_global);
        }
    }
}

void context::eval(const int32_t * tokens, int64_t n, bool logits_all, std::vector<float> & logits) {
    const hparams & hp = model_.hp;
    if (n <= 0) {
        fail("eval needs at least one token");
    }
    if (n_past_ + n > params_.n_ctx) {
        fail("%lld tokens after the %lld already in the context do not fit in n_ctx = %d", (long long) n,
             (long long) n_past_, params_.n_ctx);
    }
    for (int64_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail("token id %d at index %lld is out of range [0, %d)", tokens[i], (long long) i, hp.n_vocab);
        }
    }

    const int64_t n_embd = hp.n_embd;
    const int64_t n_q    = int64_t(hp.n_head) * hp.head_dim;
    const int64_t n_kv   = int64_t(hp.n_head_kv) * hp.head_dim;
    const int64_t n_ub   = std::min<int64_t>(n, params_.n_batch);
    x_.resize(size_t(n * n_embd));
    xn_.resize(size_t(n * n_embd));
    q_.resize(size_t(n * n_q));
    k_.resize(size_t(n * n_kv));
    v_.resize(size_t(n * n_kv));
    attn_.resize(size_t(n * n_q));
    gate_.resize(size_t(n_ub * hp.n_ff));
    up_.resize(size_t(n_ub * hp.n_ff));

    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        pos[size_t(i)] = int32_t(n_past_ + i);
    }
    rope_table rope;
    rope_table_init(rope, pos.data(), n, hp.n_rot, hp.rope_base, hp.rope_scale, model_.rope_freqs);
    const bool adjacent = hp.rope == rope_style::adjacent;

    get_rows(model_.tok_embd, tokens, n, x_.data());
    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & l = model_.layers[size_t(il)];
        op_rms_norm(x_.data(), l.attn_norm, hp.rms_eps, n, n_embd, xn_.data(), pool_);
        for (int64_t b = 0; b < n; b += n_ub) {
            const int64_t nb = std::min(n_ub, n - b);
            matmul(l.wq, &xn_[size_t(b * n_embd)], nb, &q_[size_t(b * n_q)], pool_);
            matmul(l.wk, &xn_[size_t(b * n_embd)], nb, &k_[size_t(b * n_kv)], pool_);
            matmul(l.wv, &xn_[size_t(b * n_embd)], nb, &v_[size_t(b * n_kv)], pool_);
        }
        if (l.bq != nullptr) {
            op_add_bias(q_.data(), l.bq, n, n_q);
            op_add_bias(k_.data(), l.bk, n, n_kv);
            op_add_bias(v_.data(), l.bv, n, n_kv);
        }
        op_rope(q_.data(), n, hp.n_head, hp.head_dim, rope, adjacent);
        op_rope(k_.data(), n, hp.n_head_kv, hp.head_dim, rope, adjacent);
        if (hook_) {
            hook_(il, q_.data(), k_.data(), n);
        }

        attention_layer(il, n, pos.data());

        for (int64_t b = 0; b < n; b += n_ub) {
            const int64_t nb = std::min(n_ub, n - b);
            float *       xb = &x_[size_t(b * n_embd)];
            float *       hb = &xn_[size_t(b * n_embd)];
            matmul(l.wo, &attn_[size_t(b * n_q)], nb, hb, pool_);
            op_add(xb, hb, nb * n_embd);
            op_rms_norm(xb, l.ffn_norm, hp.rms_eps, nb, n_embd, hb, pool_);
            matmul(l.ffn_gate, hb, nb, gate_.data(), pool_);
            matmul(l.ffn_up, hb, nb, up_.data(), pool_);
            op_swiglu(gate_.data(), up_.data(), nb * hp.n_ff, pool_);
            matmul(l.ffn_down, gate_.data(), nb, hb, pool_);
            op_add(xb, hb, nb * n_embd);
        }
    }
    n_past_ += n;

    // Logits of the last token, or of every token.
    const int64_t first = logits_all ? 0 : n - 1;
    const int64_t n_out = n - first;
    logits.resize(size_t(n_out * hp.n_vocab));
    op_rms_norm(&x_[size_t(first * n_embd)], model_.output_norm, hp.rms_eps, n_out, n_embd,
                &xn_[size_t(first * n_embd)], pool_);
    for (int64_t b = 0; b < n_out; b += n_ub) {
        const int64_t nb = std::min(n_ub, n_out - b);
        matmul(model_.output, &xn_[size_t((first + b) * n_embd)], nb, &logits[size_t(b * hp.n_vocab)], pool_);
    }
}

}  // namespace tca
