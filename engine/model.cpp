#include "model.h"

#include "common.h"

namespace tca {

namespace {

const arch_def * const k_archs[] = { &arch_llama, &arch_qwen2 };

const arch_def & arch_find(const gguf_file & f) {
    const std::string name = f.get_str("general.architecture");
    for (const arch_def * a : k_archs) {
        if (name == a->name) {
            return *a;
        }
    }
    fail("%s: unsupported architecture '%s' (supported: llama, qwen2)", f.path().c_str(), name.c_str());
}

// A hyper-parameter read from the file: positive and below a sanity bound, so a hostile value can
// neither divide by zero nor size a huge buffer before the tensor shapes are checked against it.
int hparam_u32(const gguf_file & f, const std::string & key, int64_t max_value) {
    const uint32_t v = f.get_u32(key);
    if (v == 0 || int64_t(v) > max_value) {
        fail("%s: metadata '%s' = %u is out of range [1, %lld]", f.path().c_str(), key.c_str(), v,
             (long long) max_value);
    }
    return int(v);
}

}  // namespace

void hparams_load_common(const gguf_file & f, hparams & hp) {
    const std::string & a = hp.arch;
    hp.n_layer            = hparam_u32(f, a + ".block_count", 4096);
    hp.n_embd             = hparam_u32(f, a + ".embedding_length", 1 << 17);
    hp.n_ff               = hparam_u32(f, a + ".feed_forward_length", 1 << 20);
    hp.n_head             = hparam_u32(f, a + ".attention.head_count", 4096);
    hp.n_head_kv = f.has(a + ".attention.head_count_kv") ? hparam_u32(f, a + ".attention.head_count_kv", 4096)
                                                         : hp.n_head;
    hp.n_ctx_train = hparam_u32(f, a + ".context_length", 1 << 24);
    hp.head_dim    = f.has(a + ".attention.key_length") ? hparam_u32(f, a + ".attention.key_length", 4096)
                                                        : hp.n_embd / hp.n_head;
    hp.n_rot = f.has(a + ".rope.dimension_count") ? hparam_u32(f, a + ".rope.dimension_count", 4096) : hp.head_dim;
    hp.rms_eps   = f.get_f32_or(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
    hp.rope_base = f.get_f32_or(a + ".rope.freq_base", 10000.0f);

    const std::string scaling = f.get_str_or(a + ".rope.scaling.type", "none");
    if (scaling == "linear") {
        const float factor = f.get_f32(a + ".rope.scaling.factor");
        if (!(factor >= 1.0f && factor <= 1024.0f)) {
            fail("%s: metadata '%s.rope.scaling.factor' = %g is out of range [1, 1024]", f.path().c_str(),
                 a.c_str(), double(factor));
        }
        hp.rope_scale = 1.0f / factor;
    } else if (scaling != "none") {
        fail("%s: rope scaling type '%s' (key '%s.rope.scaling.type') is not supported", f.path().c_str(),
             scaling.c_str(), a.c_str());
    }
    if (hp.n_head % hp.n_head_kv != 0) {
        fail("%s: head_count %d is not a multiple of head_count_kv %d", f.path().c_str(), hp.n_head, hp.n_head_kv);
    }
    if (hp.head_dim % 2 != 0 || hp.n_rot % 2 != 0 || hp.n_rot > hp.head_dim) {
        fail("%s: head dimension %d / rope dimension %d must be even with rope <= head", f.path().c_str(),
             hp.head_dim, hp.n_rot);
    }
    if (!(hp.rms_eps > 0.0f && hp.rms_eps < 1.0f) || !(hp.rope_base > 1.0f)) {
        fail("%s: rms epsilon %g or rope base %g is out of range", f.path().c_str(), double(hp.rms_eps),
             double(hp.rope_base));
    }
}

const gguf_tensor & tensor_loader::get(const std::string & name) const {
    const gguf_tensor * t = file_.find_tensor(name);
    if (t == nullptr) {
        fail("%s: tensor '%s' is missing", file_.path().c_str(), name.c_str());
    }
    return *t;
}

weight tensor_loader::matrix(const std::string & name, int64_t n_in, int64_t n_out) const {
    const gguf_tensor & t = get(name);
    if (t.n_dims != 2 || t.ne[0] != n_in || t.ne[1] != n_out) {
        fail("%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", file_.path().c_str(),
             name.c_str(), (long long) t.ne[0], (long long) t.ne[1], (long long) t.ne[2], (long long) t.ne[3],
             (long long) n_in, (long long) n_out);
    }
    if (!ggml_traits(t.type).computable) {
        fail("%s: tensor '%s' has type %s, which this engine cannot compute with", file_.path().c_str(),
             name.c_str(), ggml_traits(t.type).name);
    }
    return weight{ t.type, n_in, n_out, t.data };
}

const float * tensor_loader::vector(const std::string & name, int64_t n, bool optional) const {
    if (optional && !has(name)) {
        return nullptr;
    }
    const gguf_tensor & t = get(name);
    if (t.n_dims != 1 || t.ne[0] != n || t.type != ggml_type::F32) {
        fail("%s: tensor '%s' must be an F32 vector of %lld elements (has %s, %lld elements)",
             file_.path().c_str(), name.c_str(), (long long) n, ggml_traits(t.type).name, (long long) t.ne[0]);
    }
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) != 0) {
        fail("%s: tensor '%s' is not aligned for F32 access", file_.path().c_str(), name.c_str());
    }
    return reinterpret_cast<const float *>(t.data);
}

void tensors_load_common(const tensor_loader & tl, model & m, bool with_qkv_bias) {
    const hparams & hp   = m.hp;
    const int64_t   n_q  = int64_t(hp.n_head) * hp.head_dim;
    const int64_t   n_kv = int64_t(hp.n_head_kv) * hp.head_dim;

    m.tok_embd    = tl.matrix("token_embd.weight", hp.n_embd, hp.n_vocab);
    m.output_norm = tl.vector("output_norm.weight", hp.n_embd);
    m.output      = tl.has("output.weight") ? tl.matrix("output.weight", hp.n_embd, hp.n_vocab) : m.tok_embd;
    m.rope_freqs  = tl.vector("rope_freqs.weight", hp.n_rot / 2, true);

    m.layers.resize(size_t(hp.n_layer));
    for (int il = 0; il < hp.n_layer; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        layer_weights &   l = m.layers[size_t(il)];
        l.attn_norm         = tl.vector(p + "attn_norm.weight", hp.n_embd);
        l.wq                = tl.matrix(p + "attn_q.weight", hp.n_embd, n_q);
        l.wk                = tl.matrix(p + "attn_k.weight", hp.n_embd, n_kv);
        l.wv                = tl.matrix(p + "attn_v.weight", hp.n_embd, n_kv);
        l.wo                = tl.matrix(p + "attn_output.weight", n_q, hp.n_embd);
        if (with_qkv_bias) {
            l.bq = tl.vector(p + "attn_q.bias", n_q);
            l.bk = tl.vector(p + "attn_k.bias", n_kv);
            l.bv = tl.vector(p + "attn_v.bias", n_kv);
        }
        l.ffn_norm = tl.vector(p + "ffn_norm.weight", hp.n_embd);
        l.ffn_gate = tl.matrix(p + "ffn_gate.weight", hp.n_embd, hp.n_ff);
        l.ffn_up   = tl.matrix(p + "ffn_up.weight", hp.n_embd, hp.n_ff);
        l.ffn_down = tl.matrix(p + "ffn_down.weight", hp.n_ff, hp.n_embd);
    }
}

std::unique_ptr<model> model_load(const std::string & path, bool vocab_only) {
    auto m   = std::make_unique<model>();
    m->file  = gguf_file::open(path);
    m->vocab = vocab::from_gguf(*m->file);
    if (vocab_only) {
        return m;
    }
    const arch_def & arch = arch_find(*m->file);
    m->hp.arch            = arch.name;
    arch.load_hparams(*m->file, m->hp);

    const gguf_tensor * embd = m->file->find_tensor("token_embd.weight");
    if (embd == nullptr || embd->n_dims != 2) {
        fail("%s: tensor 'token_embd.weight' is missing or not a matrix", path.c_str());
    }
    m->hp.n_vocab = int(embd->ne[1]);
    if (m->hp.n_vocab < m->vocab->n_tokens()) {
        fail("%s: token_embd.weight has %d rows but the vocabulary has %d tokens", path.c_str(), m->hp.n_vocab,
             m->vocab->n_tokens());
    }
    arch.load_tensors(tensor_loader(*m->file, *m), *m);
    m->has_tca = tca_config_read(*m->file, m->hp.n_layer, m->hp.n_head_kv, m->tca);

    for (const gguf_tensor & t : m->file->tensors()) {
        m->n_params += t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3];
        m->n_bytes += t.n_bytes;
    }
    return m;
}

}  // namespace tca
