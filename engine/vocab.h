// The tokenizer: text <-> token ids, built from the tokenizer.ggml.* metadata of a GGUF file.
//
// Two kinds, as tokenizer.ggml.model names them:
//   "llama": SentencePiece-style. Pieces use U+2581 for spaces, merged greedily by score; characters no
//            piece covers fall back to byte tokens <0xXX>; a space is prefixed to the text
//            (tokenizer.ggml.add_space_prefix, default true).
//   "gpt2":  byte-level BPE. The text is split into words by the pre-tokenizer tokenizer.ggml.pre
//            (engine/pretokenize.h), each word's bytes are spelled in GPT-2's printable alphabet and
//            merged by the rank of tokenizer.ggml.merges.
// Control and user-defined tokens (tokenizer.ggml.token_type) are matched in the text before that, the
// longest first: user-defined ones always, control ones only with parse_special.
//
// Where this differs from llama.cpp, by choice:
//   - An unknown tokenizer.ggml.pre is an error naming the value, not a silent fallback: the regex is
//     part of the model, and a wrong one degrades it quietly.
//   - detokenize concatenates the pieces exactly (no clean-up of spaces before punctuation), so that
//     detokenize(tokenize(x)) == x; for SentencePiece it drops the space tokenize prefixed.
//   - Invalid UTF-8 input keeps its bytes (as byte tokens) instead of becoming U+FFFD.
//   - A "gpt2" vocabulary without tokenizer.ggml.bos_token_id / eos_token_id has none (-1).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gguf.h"
#include "pretokenize.h"

namespace tca {

enum class vocab_type { spm, bpe };

// tokenizer.ggml.token_type values.
enum class token_type : int32_t {
    undefined    = 0,
    normal       = 1,
    unknown      = 2,
    control      = 3,
    user_defined = 4,
    unused       = 5,
    byte         = 6,
};

class vocab {
  public:
    static std::unique_ptr<vocab> from_gguf(const gguf_file & f);  // throws tca::error

    // Token ids of text (raw bytes, normally UTF-8). add_special: prefix BOS / append EOS as the
    // vocabulary asks (add_bos() / add_eos()). parse_special: match control tokens in the text.
    std::vector<int32_t> tokenize(const std::string & text, bool add_special, bool parse_special) const;
    // The bytes of one token: may be partial UTF-8. Control and unknown tokens give "" unless special.
    std::string token_to_piece(int32_t id, bool special) const;
    std::string detokenize(const std::vector<int32_t> & ids, bool special) const;

    int32_t n_tokens() const { return int32_t(tokens_.size()); }
    int32_t bos() const { return bos_; }  // -1 when absent
    int32_t eos() const { return eos_; }
    int32_t eot() const { return eot_; }
    int32_t eom() const { return eom_; }
    int32_t unk() const { return unk_; }
    bool    add_bos() const { return add_bos_; }
    bool    add_eos() const { return add_eos_; }
    // End of generation: eos, eot, eom and the tokens named like them (<|im_end|>, <|eot_id|>, ...).
    bool       is_eog(int32_t id) const;
    bool       is_control(int32_t id) const;
    token_type type_of(int32_t id) const;
    const std::string & piece(int32_t id) const;  // the vocabulary string as stored
    vocab_type          type() const { return type_; }
    const std::string & pre() const { return pre_name_; }  // tokenizer.ggml.pre, "" when absent

  private:
    struct token_data {
        std::string text;   // as stored in tokenizer.ggml.tokens
        std::string bytes;  // what it stands for in text (token_to_piece with special)
        float       score;
        token_type  type;
    };

    // A merge of byte-level BPE: the ids of its two parts, keyed as (left << 32 | right).
    struct bpe_merge {
        int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
        int32_t result;  // symbol id of the concatenation
    };

    vocab() = default;
    void load_tokens(const gguf_file & f);
    void load_bpe_merges(const gguf_file & f);
    void load_special(const gguf_file & f);
    int32_t find_token(const std::string & text) const;  // -1 when absent
    int32_t check_id(const gguf_file & f, const char * key, int32_t fallback) const;
    int32_t byte_token(uint8_t byte) const;  // the token standing for one byte, -1 when none
    int32_t check_token_range(int32_t id) const;  // id, or throws naming it

    void    tokenize_spm(const std::string & text, std::vector<int32_t> & out) const;
    void    tokenize_bpe(const std::string & text, std::vector<int32_t> & out) const;
    void    bpe_word(const std::string & word, std::vector<int32_t> & out) const;
    int32_t bpe_symbol(const std::string & text);  // symbol id of a merge part, added when new

    vocab_type                               type_ = vocab_type::spm;
    std::string                              pre_name_;
    pretokenizer                             pre_ = pretokenizer::gpt2;
    std::vector<token_data>                  tokens_;         // [n_tokens]
    std::unordered_map<std::string, int32_t> token_to_id_;    // the last id of each string
    std::vector<int32_t>                     special_;        // control/user-defined/unknown, longest first
    std::vector<bool>                        eog_;            // [n_tokens]
    int32_t                                  byte_ids_[256];  // spm: <0xXX>; bpe: the byte's character

    // Byte-level BPE: symbols are the vocabulary ids, then merge parts that are not tokens.
    std::unordered_map<uint64_t, bpe_merge>  bpe_merges_;
    std::unordered_map<std::string, int32_t> bpe_extra_;      // text -> symbol id >= n_tokens
    int32_t                                  bpe_byte_symbols_[256];  // the symbol a word's byte starts as
    bool                                     ignore_merges_ = false;  // a word that is a token stays whole

    int32_t bos_ = -1, eos_ = -1, eot_ = -1, eom_ = -1, unk_ = -1;
    bool    add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
};

}  // namespace tca
