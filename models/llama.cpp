// `llama`: Llama 2/3/3.1, SmolLM2, Mistral. Q/K rows are stored permuted for adjacent-pair RoPE; the
// output matrix may be tied to the token embedding; Llama 3.1 adds the `rope_freqs` divisors.
#include "model.h"

namespace tca {

static void llama_load_hparams(const gguf_file & f, hparams & hp) {
    hparams_load_common(f, hp);
    hp.rope = rope_style::adjacent;
}

static void llama_load_tensors(const tensor_loader & tl, model & m) {
    tensors_load_common(tl, m, /*with_qkv_bias=*/false);
}

const arch_def arch_llama = { "llama", llama_load_hparams, llama_load_tensors };

}  // namespace tca
