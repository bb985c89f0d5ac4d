#include "context.h"

#include <algorithm>
#include <thread>

#include "common.h"

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
      n_threads_(default_threads(params.n_threads)),
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
    backend_ = backend_create(params_.device, m, n_threads_);
}

void context::reset() {
    backend_->kv_clear();
    n_past_ = 0;
}

int64_t context::kv_n_tokens(int il) const {
    int64_t n = 0;
    for (int ih = 0; ih < model_.hp.n_head_kv; ++ih) {
        n += backend_->kv_view(il, ih).n;
    }
    return n;
}

int64_t context::kv_n_tokens() const {
    int64_t n = 0;
    for (int il = 0; il < model_.hp.n_layer; ++il) {
        n += kv_n_tokens(il);
    }
    return n;
}

size_t context::kv_bytes_per_token() const {
    return 2 * size_t(model_.hp.head_dim) * sizeof(uint16_t) + sizeof(int32_t);
}

void context::call_hook(int il, int64_t n, const activations & a) {
    const hparams & hp = model_.hp;
    const size_t n_q   = size_t(n) * hp.n_head * hp.head_dim;
    const size_t n_k   = size_t(n) * hp.n_head_kv * hp.head_dim;
    hook_q_.resize(n_q);
    hook_k_.resize(n_k);
    backend_->to_host(a.q, n_q, hook_q_.data());
    backend_->to_host(a.k, n_k, hook_k_.data());
    hook_(il, hook_q_.data(), hook_k_.data(), n);
}

void context::attention_layer(int il, int64_t n, const activations & a) {
    const hparams & hp = model_.hp;
    const int n_group  = hp.n_head / hp.n_head_kv;
    backend & be       = *backend_;
    // The scores of KV head ih's query rows [n_group, head_dim] at the chunk's last token.
    auto probs_of = [&](int ih) {
        const float * q_last = a.q + (size_t(n - 1) * hp.n_head + size_t(ih) * n_group) * hp.head_dim;
        return [&be, il, ih, q_last, n_group](int64_t nb, int64_t ne, int64_t ob, int64_t oe, float * out) {
            be.group_probs(il, ih, q_last, n_group, nb, ne, ob, oe, out);
        };
    };

    for (int ih = 0; ih < hp.n_head_kv; ++ih) {
        const kv_head_view h       = be.kv_view(il, ih);
        keeps_[size_t(ih)].changed = false;
        if (tca_enabled() && n > 1) {
            tca_plan_prefill(tca_, tca_.head_p(il, ih, hp.n_head_kv), h.n, h.n_global, n, probs_of(ih),
                             plans_[size_t(ih)], keeps_[size_t(ih)]);
        } else {
            plan_dense(h.n, n, plans_[size_t(ih)]);
        }
    }
    be.attention(il, a.q, n, plans_.data(), a.attn);

    if (!tca_enabled()) {
        return;
    }
    for (int ih = 0; ih < hp.n_head_kv; ++ih) {
        tca_keep & keep = keeps_[size_t(ih)];
        if (n == 1) {
            const kv_head_view h = be.kv_view(il, ih);
            tca_decode_compact(tca_, tca_.head_p(il, ih, hp.n_head_kv), h.n, h.n_global, probs_of(ih), keep);
        }
        if (keep.changed) {
            be.kv_keep(il, ih, keep.keep, keep.n_global);
        }
    }
}

void context::eval(const int32_t * tokens, int64_t n, bool logits_all, float * logits) {
    const hparams & hp = model_.hp;
    if (n <= 0) {
        fail("eval needs at least one token");
    }
    if (n_past_ + n > params_.n_ctx) {
        fail("%lld tokens after the %lld already in the context do not fit in n_ctx = %d", (long long)n,
             (long long)n_past_, params_.n_ctx);
    }
    for (int64_t i = 0; i < n; ++i) {
        if (tokens[i] < 0 || tokens[i] >= hp.n_vocab) {
            fail("token id %d at index %lld is out of range [0, %d)", tokens[i], (long long)i, hp.n_vocab);
        }
    }

    // A failure past this point (GPU memory running out, say) may leave some layers' caches holding the
    // new tokens and others not: the context is reset rather than left inconsistent.
    try {
        forward(tokens, n, logits_all, logits);
    } catch (...) {
        reset();
        throw;
    }
    n_past_ += n;
}

void context::forward(const int32_t * tokens, int64_t n, bool logits_all, float * logits) {
    const hparams & hp   = model_.hp;
    backend & be         = *backend_;
    const int64_t n_embd = hp.n_embd;
    const int64_t n_q    = int64_t(hp.n_head) * hp.head_dim;
    const int64_t n_kv   = int64_t(hp.n_head_kv) * hp.head_dim;
    const int64_t n_ub   = std::min<int64_t>(n, params_.n_batch);
    activations a;
    a.x    = be.buffer(act_buffer::x, size_t(n * n_embd));
    a.xn   = be.buffer(act_buffer::xn, size_t(n * n_embd));
    a.q    = be.buffer(act_buffer::q, size_t(n * n_q));
    a.k    = be.buffer(act_buffer::k, size_t(n * n_kv));
    a.v    = be.buffer(act_buffer::v, size_t(n * n_kv));
    a.attn = be.buffer(act_buffer::attn, size_t(n * n_q));
    a.gate = be.buffer(act_buffer::gate, size_t(n_ub * hp.n_ff));
    a.up   = be.buffer(act_buffer::up, size_t(n_ub * hp.n_ff));

    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        pos[size_t(i)] = int32_t(n_past_ + i);
    }
    be.set_positions(pos.data(), n);

    // x is the residual stream: each block normalises it for its own input (inside the product where the
    // backend can) and adds its output back to it.
    be.get_rows(model_.tok_embd, tokens, n, a.x);
    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights & l = model_.layers[size_t(il)];
        if (n <= n_ub) {  // one chunk (generation always): one call, which a backend may fuse
            const matmul_out qkv[3] = {{&l.wq, l.bq, a.q}, {&l.wk, l.bk, a.k}, {&l.wv, l.bv, a.v}};
            be.qkv_rope_append(il, qkv, {a.x, l.attn_norm, hp.rms_eps, a.xn}, n);  // = the last attn_next
        } else {
            be.rms_norm(a.x, l.attn_norm, hp.rms_eps, n, n_embd, a.xn);
            for (int64_t b = 0; b < n; b += n_ub) {
                const int64_t nb        = std::min(n_ub, n - b);
                const matmul_out qkv[3] = {{&l.wq, l.bq, a.q + b * n_q},
                                           {&l.wk, l.bk, a.k + b * n_kv},
                                           {&l.wv, l.bv, a.v + b * n_kv}};
                be.matmul_multi(qkv, 3, a.xn + b * n_embd, nb);
            }
            be.rope_append(il, a.q, a.k, a.v, n);
        }
        if (hook_) {
            call_hook(il, n, a);
        }

        attention_layer(il, n, a);

        // The next layer's Q/K/V read the whole x in one call when there is one chunk: the last product
        // prepares that input (matmul_add's next).
        const norm_input attn_next{
            a.x, il + 1 < hp.n_layer ? model_.layers[size_t(il) + 1].attn_norm : nullptr, hp.rms_eps, a.xn};
        for (int64_t b = 0; b < n; b += n_ub) {
            const int64_t nb = std::min(n_ub, n - b);
            float * xb       = a.x + b * n_embd;
            const norm_input ffn_in{xb, l.ffn_norm, hp.rms_eps, a.xn + b * n_embd};
            be.matmul_add(l.wo, a.attn + b * n_q, nb, xb, &ffn_in);
            be.ffn_swiglu(l.ffn_gate, l.ffn_up, ffn_in, nb, a.gate, a.up);
            be.matmul_add(l.ffn_down, a.gate, nb, xb,
                          n <= n_ub && attn_next.g != nullptr ? &attn_next : nullptr);
        }
    }

    // Logits of the last token, or of every token, computed in chunks of n_ub rows.
    const int64_t first = logits_all ? 0 : n - 1;
    const int64_t n_out = n - first;
    float * out         = be.buffer(act_buffer::logits, size_t(std::min(n_out, n_ub) * hp.n_vocab));
    be.rms_norm(a.x + first * n_embd, model_.output_norm, hp.rms_eps, n_out, n_embd, a.xn + first * n_embd);
    for (int64_t b = 0; b < n_out; b += n_ub) {
        const int64_t nb = std::min(n_ub, n_out - b);
        be.matmul(model_.output, nullptr, a.xn + (first + b) * n_embd, nb, out);
        be.to_host(out, size_t(nb * hp.n_vocab), logits + b * hp.n_vocab);
    }
}

}  // namespace tca
