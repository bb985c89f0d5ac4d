// A loaded model: hyper-parameters, weight views into the GGUF mmap, and the vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "matmul.h"
#include "tca_config.h"
#include "vocab.h"

namespace tca {

enum class rope_style {
    adjacent,     // pairs (2i, 2i+1): `llama` GGUFs store Q/K rows permuted for this
    rotate_half,  // pairs (i, i + n_rot/2): `qwen2`
};

struct hparams {
    std::string arch;
    int         n_layer     = 0;
    int         n_embd      = 0;
    int         n_head      = 0;
    int         n_head_kv   = 0;
    int         head_dim    = 0;
    int         n_ff        = 0;
    int         n_vocab     = 0;
    int         n_ctx_train = 0;
    int         n_rot       = 0;  // rotated dims per head (<= head_dim)
    float       rms_eps     = 1e-5f;
    float       rope_base   = 10000.0f;
    float       rope_scale  = 1.0f;  // linear scaling: positions are multiplied by this
    rope_style  rope        = rope_style::adjacent;
};

struct layer_weights {
    const float * attn_norm = nullptr;  // [n_embd]
    weight        wq, wk, wv, wo;       // [n_head*head_dim, n_embd] ... wo: [n_embd, n_head*head_dim]
    const float * bq = nullptr;         // [n_head*head_dim] (qwen2), else null
    const float * bk = nullptr;         // [n_head_kv*head_dim]
    const float * bv = nullptr;
    const float * ffn_norm = nullptr;   // [n_embd]
    weight        ffn_gate, ffn_up;     // [n_ff, n_embd]
    weight        ffn_down;             // [n_embd, n_ff]
};

struct model {
    std::unique_ptr<gguf_file> file;
    std::unique_ptr<tca::vocab> vocab;
    hparams                    hp;
    weight                     tok_embd;     // [n_vocab, n_embd]
    const float *              output_norm = nullptr;
    weight                     output;       // [n_vocab, n_embd]; tok_embd when tied
    const float *              rope_freqs  = nullptr;  // [n_rot/2] frequency divisors (Llama 3.1), or null
    std::vector<layer_weights> layers;
    bool                       has_tca     = false;  // tca.* metadata present (validated on load)
    tca_config                 tca;
    int64_t                    n_params    = 0;
    size_t                     n_bytes     = 0;  // bytes of all tensors
};

// Loads a model; vocab_only stops after the tokenizer and metadata (a vocab-only GGUF has no tensors).
// Throws tca::error naming the file and the problem.
std::unique_ptr<model> model_load(const std::string & path, bool vocab_only);

// Looks up tensors by name and checks their shape and type; used by the architecture files.
class tensor_loader {
  public:
    tensor_loader(const gguf_file & f, model & m) : file_(f), model_(m) {}

    // A matrix [n_out, n_in] of any computable type.
    weight matrix(const std::string & name, int64_t n_in, int64_t n_out) const;
    // An F32 vector [n]; nullptr when optional and absent.
    const float * vector(const std::string & name, int64_t n, bool optional = false) const;
    bool has(const std::string & name) const { return file_.find_tensor(name) != nullptr; }

  private:
    const gguf_tensor & get(const std::string & name) const;

    const gguf_file & file_;
    model &           model_;
};

// One architecture: reads its hyper-parameters and binds its tensors (models/<arch>.cpp).
struct arch_def {
    const char * name;
    void (*load_hparams)(const gguf_file & f, hparams & hp);
    void (*load_tensors)(const tensor_loader & tl, model & m);
};

extern const arch_def arch_llama;
extern const arch_def arch_qwen2;

// Shared hyper-parameter reading for the llama family: `<arch>.block_count`, `.embedding_length`, ...
void hparams_load_common(const gguf_file & f, hparams & hp);
// Shared tensor binding: token embedding, output (tied when `output.weight` is absent), every block's
// attention and SwiGLU feed-forward; with_qkv_bias adds the q/k/v biases (qwen2).
void tensors_load_common(const tensor_loader & tl, model & m, bool with_qkv_bias);

}  // namespace tca
