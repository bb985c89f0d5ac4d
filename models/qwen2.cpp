// `qwen2`: Qwen2 / Qwen2.5. Rotate-half RoPE on unpermuted Q/K, biases on q/k/v, untied output.
#include "model.h"

namespace tca {

static void qwen2_load_hparams(const gguf_file & f, hparams & hp) {
    hparams_load_common(f, hp);
    hp.rope = rope_style::rotate_half;
}

static void qwen2_load_tensors(const tensor_loader & tl, model & m) {
    tensors_load_common(tl, m, /*with_qkv_bias=*/true);
}

const arch_def arch_qwen2 = { "qwen2", qwen2_load_hparams, qwen2_load_tensors };

}  // namespace tca
