// Loading a vocabulary from GGUF metadata, special tokens, and the text <-> id paths shared by both
// kinds. The merges themselves: vocab_spm.cpp and vocab_bpe.cpp.
#include "vocab.h"

#include <algorithm>
#include <climits>
#include <string_view>

#include "common.h"
#include "unicode.h"

namespace tca {

namespace {

constexpr const char * kv_model       = "tokenizer.ggml.model";
constexpr const char * kv_pre         = "tokenizer.ggml.pre";
constexpr const char * kv_tokens      = "tokenizer.ggml.tokens";
constexpr const char * kv_scores      = "tokenizer.ggml.scores";
constexpr const char * kv_token_type  = "tokenizer.ggml.token_type";
constexpr const char * kv_add_bos     = "tokenizer.ggml.add_bos_token";
constexpr const char * kv_add_eos     = "tokenizer.ggml.add_eos_token";
constexpr const char * kv_space_pref  = "tokenizer.ggml.add_space_prefix";
constexpr const char * kv_bos_id      = "tokenizer.ggml.bos_token_id";
constexpr const char * kv_eos_id      = "tokenizer.ggml.eos_token_id";
constexpr const char * kv_eot_id      = "tokenizer.ggml.eot_token_id";
constexpr const char * kv_eom_id      = "tokenizer.ggml.eom_token_id";
constexpr const char * kv_unk_id      = "tokenizer.ggml.unknown_token_id";
const std::string      spm_space      = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// The tokenizer.ggml.pre values understood, and their split rule. Llama 3 and its aliases also keep
// a word that is a whole token unmerged (its tokenizer's ignore_merges).
struct pre_entry {
    const char * name;
    pretokenizer kind;
    bool         ignore_merges;
    bool         add_bos;  // default of tokenizer.ggml.add_bos_token
};
const pre_entry pre_table[] = {
    {"llama-bpe", pretokenizer::llama3, true, true}, {"llama3", pretokenizer::llama3, true, true},
    {"llama-v3", pretokenizer::llama3, true, true},  {"qwen2", pretokenizer::qwen2, false, false},
    {"smollm", pretokenizer::smollm, false, false},  {"gpt-2", pretokenizer::gpt2, false, false},
};

// Tokens that end generation, recognized by their text (models rarely mark them otherwise), in order
// of preference for the EOT token when tokenizer.ggml.eot_token_id is absent.
const char * const eot_names[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>",           "<end_of_turn>",
                                  "<|endoftext|>", "<EOT>",      "<|end_of_text|>", "<end_of_utterance>"};
const char * const eom_names[] = {"<|eom_id|>"};

bool is_special_type(token_type t) {
    return t == token_type::control || t == token_type::user_defined || t == token_type::unknown;
}

// The bytes a byte-level BPE token stands for: each character of its text back through GPT-2's
// alphabet. A character outside the alphabet (a malformed vocabulary) is kept as its UTF-8.
std::string gpt2_decode(const std::string & text) {
    std::string out;
    for (const utf8_unit & u : utf8_decode(text)) {
        const int b = gpt2_cpt_to_byte(u.cpt);
        if (b >= 0) {
            out += char(b);
        } else {
            out.append(text, u.offset, u.len);
        }
    }
    return out;
}

// "<0x4A>" -> 0x4A; -1 when text is not of that form.
int parse_byte_token(const std::string & text) {
    if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') {
        return -1;
    }
    int v = 0;
    for (int i = 3; i < 5; ++i) {
        const char c = text[i];
        const int  d = (c >= '0' && c <= '9') ? c - '0'
                       : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                       : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                : -1;
        if (d < 0) {
            return -1;
        }
        v = v * 16 + d;
    }
    return v;
}

void replace_all(std::string & s, const std::string & from, const std::string & to) {
    for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size())) {
        s.replace(pos, from.size(), to);
    }
}

}  // namespace

std::unique_ptr<vocab> vocab::from_gguf(const gguf_file & f) {
    std::unique_ptr<vocab> v(new vocab());
    const std::string      model = f.get_str(kv_model);
    if (model == "llama") {
        v->type_ = vocab_type::spm;
    } else if (model == "gpt2") {
        v->type_ = vocab_type::bpe;
    } else {
        fail("%s: %s = '%s' is not supported (supported: 'llama' for SentencePiece, 'gpt2' for byte-level BPE)",
             f.path().c_str(), kv_model, model.c_str());
    }
    v->load_tokens(f);

    v->pre_name_ = f.get_str_or(kv_pre, "");
    if (v->type_ == vocab_type::bpe) {
        const pre_entry * entry = nullptr;
        for (const pre_entry & e : pre_table) {
            if (v->pre_name_ == e.name) {
                entry = &e;
            }
        }
        if (entry == nullptr) {
            std::string known;
            for (const pre_entry & e : pre_table) {
                known += known.empty() ? "" : ", ";
                known += e.name;
            }
            fail("%s: %s = '%s' is not a known pre-tokenizer (known: %s)", f.path().c_str(), kv_pre,
                 v->pre_name_.c_str(), known.c_str());
        }
        v->pre_           = entry->kind;
        v->ignore_merges_ = entry->ignore_merges;
        v->add_bos_       = entry->add_bos;
        v->load_bpe_merges(f);
    } else {
        v->add_bos_          = true;
        v->add_space_prefix_ = f.has(kv_space_pref) ? f.get_bool(kv_space_pref) : true;
    }
    v->load_special(f);
    return v;
}

void vocab::load_tokens(const gguf_file & f) {
    const std::vector<std::string> texts = f.get_arr_str(kv_tokens);
    if (texts.empty() || texts.size() > size_t(INT32_MAX)) {
        fail("%s: %s has %zu entries", f.path().c_str(), kv_tokens, texts.size());
    }
    const size_t n = texts.size();

    std::vector<float> scores(n, 0.0f);
    if (f.has(kv_scores)) {
        scores = f.get_arr_f32(kv_scores);
    } else if (type_ == vocab_type::spm) {
        fail("%s: %s is missing (SentencePiece vocabularies merge by score)", f.path().c_str(), kv_scores);
    }
    std::vector<int32_t> types(n, int32_t(token_type::normal));
    if (f.has(kv_token_type)) {
        types = f.get_arr_i32(kv_token_type);
    }
    if (scores.size() != n || types.size() != n) {
        fail("%s: %s has %zu entries, %s %zu and %s %zu; they must match", f.path().c_str(), kv_tokens, n,
             kv_scores, scores.size(), kv_token_type, types.size());
    }

    tokens_.resize(n);
    token_to_id_.reserve(n);
    std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
    for (size_t i = 0; i < n; ++i) {
        if (types[i] < int32_t(token_type::undefined) || types[i] > int32_t(token_type::byte)) {
            fail("%s: %s[%zu] = %d is not a token type (0..6)", f.path().c_str(), kv_token_type, i, types[i]);
        }
        token_data & t = tokens_[i];
        t.text         = texts[i];
        t.score        = scores[i];
        t.type         = token_type(types[i]);
        if (!t.text.empty()) {
            token_to_id_[t.text] = int32_t(i);
        }
    }

    // What each token stands for in text.
    for (size_t i = 0; i < n; ++i) {
        token_data & t = tokens_[i];
        if (is_special_type(t.type)) {
            t.bytes = t.text;
        } else if (t.type == token_type::normal) {
            if (type_ == vocab_type::spm) {
                t.bytes = t.text;
                replace_all(t.bytes, spm_space, " ");
            } else {
                t.bytes = gpt2_decode(t.text);
            }
        } else if (t.type == token_type::byte) {
            const int b = type_ == vocab_type::spm ? parse_byte_token(t.text) : -1;
            if (b >= 0) {
                t.bytes = std::string(1, char(b));
            } else if (type_ == vocab_type::bpe) {
                t.bytes = gpt2_decode(t.text);
            } else {
                fail("%s: %s[%zu] = '%s' has type BYTE but is not of the form <0xXX>", f.path().c_str(),
                     kv_tokens, i, t.text.c_str());
            }
        }
    }

    // The token for each byte: SentencePiece's <0xXX> byte tokens, else the byte itself as a piece;
    // byte-level BPE's one-character tokens of GPT-2's alphabet.
    for (int b = 0; b < 256; ++b) {
        if (type_ == vocab_type::spm) {
            static const char * hex = "0123456789ABCDEF";
            const std::string   name = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            byte_ids_[b]             = find_token(name);
            if (byte_ids_[b] < 0) {
                byte_ids_[b] = find_token(std::string(1, char(b)));
            }
        } else {
            byte_ids_[b] = find_token(utf8_encode(byte_to_gpt2_cpt(uint8_t(b))));
        }
    }
}

int32_t vocab::check_id(const gguf_file & f, const char * key, int32_t fallback) const {
    if (!f.has(key)) {
        return fallback < n_tokens() ? fallback : -1;
    }
    const int64_t id = f.get_i64(key);
    if (id < 0 || id >= n_tokens()) {
        fail("%s: %s = %lld is out of range: the vocabulary has %d tokens", f.path().c_str(), key, (long long) id,
             n_tokens());
    }
    return int32_t(id);
}

void vocab::load_special(const gguf_file & f) {
    const bool spm = type_ == vocab_type::spm;
    // llama.cpp's defaults: SentencePiece <unk>, <s>, </s> = 0, 1, 2.
    bos_ = check_id(f, kv_bos_id, spm ? 1 : -1);
    eos_ = check_id(f, kv_eos_id, spm ? 2 : -1);
    unk_ = check_id(f, kv_unk_id, spm ? 0 : -1);
    eot_ = check_id(f, kv_eot_id, -1);
    eom_ = check_id(f, kv_eom_id, -1);
    if (f.has(kv_add_bos)) {
        add_bos_ = f.get_bool(kv_add_bos);
    }
    add_eos_ = f.has(kv_add_eos) ? f.get_bool(kv_add_eos) : false;
    if (add_bos_ && bos_ < 0) {
        fail("%s: the vocabulary adds a BOS token (%s) but has none (%s)", f.path().c_str(), kv_add_bos, kv_bos_id);
    }
    if (add_eos_ && eos_ < 0) {
        fail("%s: the vocabulary adds an EOS token (%s) but has none (%s)", f.path().c_str(), kv_add_eos, kv_eos_id);
    }

    // End of generation. Tokens recognized by name act as control tokens whatever their stored type,
    // so that they are neither printed nor matched in plain text.
    eog_.assign(tokens_.size(), false);
    const auto mark_eog = [&](int32_t id) {
        eog_[id]        = true;
        tokens_[id].type = token_type::control;
    };
    for (const char * name : eot_names) {
        const int32_t id = find_token(name);
        if (id >= 0) {
            mark_eog(id);
            eot_ = eot_ < 0 ? id : eot_;
        }
    }
    for (const char * name : eom_names) {
        const int32_t id = find_token(name);
        if (id >= 0) {
            mark_eog(id);
            eom_ = eom_ < 0 ? id : eom_;
        }
    }
    for (int32_t id : {eos_, eot_, eom_}) {
        if (id >= 0) {
            eog_[id] = true;
        }
    }

    // Tokens matched in the text before the merges: longest first, so that a token containing
    // another wins; ties by id, for a deterministic order.
    for (int32_t id = 0; id < n_tokens(); ++id) {
        if (is_special_type(tokens_[id].type) && !tokens_[id].text.empty()) {
            special_.push_back(id);
        }
    }
    std::stable_sort(special_.begin(), special_.end(), [&](int32_t a, int32_t b) {
        return tokens_[a].text.size() > tokens_[b].text.size();
    });
}

int32_t vocab::find_token(const std::string & text) const {
    const auto it = token_to_id_.find(text);
    return it == token_to_id_.end() ? -1 : it->second;
}

int32_t vocab::byte_token(uint8_t byte) const {
    return byte_ids_[byte];
}

std::vector<int32_t> vocab::tokenize(const std::string & text, bool add_special, bool parse_special) const {
    if (text.size() > UINT32_MAX) {
        fail("tokenize: text of %zu bytes is too long (at most 4 GiB)", text.size());
    }
    // The text as fragments: special tokens found in it (token >= 0), and the raw text between them.
    struct fragment {
        int32_t token;
        size_t  offset;
        size_t  len;
    };
    std::vector<fragment> frags;
    if (!text.empty()) {
        frags.push_back({-1, 0, text.size()});
    }
    for (int32_t id : special_) {
        const token_data & t = tokens_[id];
        if (!parse_special && t.type != token_type::user_defined) {
            continue;
        }
        if (text.find(t.text) == std::string::npos) {
            continue;
        }
        std::vector<fragment> split;
        for (const fragment & fr : frags) {
            if (fr.token >= 0) {
                split.push_back(fr);
                continue;
            }
            // Occurrences within this fragment, left to right, not overlapping.
            const std::string_view view(text.data(), fr.offset + fr.len);
            size_t                 pos = fr.offset;
            for (size_t m = view.find(t.text, pos); m != std::string_view::npos; m = view.find(t.text, pos)) {
                if (m > pos) {
                    split.push_back({-1, pos, m - pos});
                }
                split.push_back({id, m, t.text.size()});
                pos = m + t.text.size();
            }
            if (pos < fr.offset + fr.len) {
                split.push_back({-1, pos, fr.offset + fr.len - pos});
            }
        }
        frags.swap(split);
    }

    std::vector<int32_t> out;
    if (add_special && add_bos_) {
        out.push_back(bos_);
    }
    // SentencePiece prefixes a space to the text, and again after each special token.
    bool after_special = true;
    for (const fragment & fr : frags) {
        if (fr.token >= 0) {
            out.push_back(fr.token);
            after_special = true;
            continue;
        }
        if (type_ == vocab_type::spm) {
            std::string piece = (add_space_prefix_ && after_special) ? " " : "";
            piece.append(text, fr.offset, fr.len);
            tokenize_spm(piece, out);
        } else {
            tokenize_bpe(text.substr(fr.offset, fr.len), out);
        }
        after_special = false;
    }
    if (add_special && add_eos_) {
        out.push_back(eos_);
    }
    return out;
}

std::string vocab::token_to_piece(int32_t id, bool special) const {
    const token_data & t = tokens_[check_token_range(id)];
    if (!special && (t.type == token_type::control || t.type == token_type::unknown)) {
        return "";
    }
    return t.bytes;
}

std::string vocab::detokenize(const std::vector<int32_t> & ids, bool special) const {
    // Undo the space SentencePiece tokenization prefixed to the text and after each special token.
    const bool  prefixed = type_ == vocab_type::spm && add_space_prefix_;
    bool        strip    = prefixed;
    std::string out;
    for (int32_t id : ids) {
        const std::string piece = token_to_piece(id, special);
        if (is_special_type(tokens_[id].type)) {
            out += piece;
            strip = prefixed;
            continue;
        }
        const size_t skip = (strip && !piece.empty() && piece[0] == ' ') ? 1 : 0;
        out.append(piece, skip, std::string::npos);
        strip = false;
    }
    return out;
}

bool vocab::is_eog(int32_t id) const {
    return id >= 0 && id < n_tokens() && eog_[id];
}

bool vocab::is_control(int32_t id) const {
    return type_of(id) == token_type::control;
}

token_type vocab::type_of(int32_t id) const {
    return tokens_[check_token_range(id)].type;
}

const std::string & vocab::piece(int32_t id) const {
    return tokens_[check_token_range(id)].text;
}

int32_t vocab::check_token_range(int32_t id) const {
    if (id < 0 || id >= n_tokens()) {
        fail("token id %d is out of range: the vocabulary has %d tokens", id, n_tokens());
    }
    return id;
}

}  // namespace tca
