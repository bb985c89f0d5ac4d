// Byte-level BPE: each pre-tokenized word starts as one symbol per byte (a character of GPT-2's
// alphabet) and adjacent symbols merge by the rank of tokenizer.ggml.merges, lowest rank first and
// leftmost among equals. Symbols are ids, so a merge is one hash lookup of an id pair; a priority
// queue keeps a word of n bytes at O(n log n).
#include <cstdint>
#include <queue>

#include "common.h"
#include "unicode.h"
#include "vocab.h"

namespace tca {

namespace {

constexpr const char * kv_merges = "tokenizer.ggml.merges";

uint64_t merge_key(int32_t left, int32_t right) {
    return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}

struct bpe_symbol_state {
    int32_t  id;      // symbol id: a token id, a merge part >= n_tokens, or -1 (merges with nothing)
    uint32_t offset;  // bytes [offset, offset + len) of the word; len 0 once merged away
    uint32_t len;
    int32_t  prev;  // neighbours in the chain of live symbols, -1 at the ends
    int32_t  next;
};

struct bpe_candidate {
    int32_t rank;
    int32_t left;  // symbol indices
    int32_t right;
    int32_t left_id;  // their ids when queued: stale once either has changed
    int32_t right_id;
    int32_t result;
};

// Priority: the lowest rank, then the leftmost.
struct bpe_candidate_after {
    bool operator()(const bpe_candidate & a, const bpe_candidate & b) const {
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};

}  // namespace

int32_t vocab::bpe_symbol(const std::string & text) {
    const int32_t id = find_token(text);
    if (id >= 0) {
        return id;
    }
    const auto it = bpe_extra_.find(text);
    if (it != bpe_extra_.end()) {
        return it->second;
    }
    const auto extra = int32_t(tokens_.size() + bpe_extra_.size());
    bpe_extra_.emplace(text, extra);
    return extra;
}

void vocab::load_bpe_merges(const gguf_file & f) {
    const std::vector<std::string> merges = f.get_arr_str(kv_merges);
    if (merges.size() > size_t(INT32_MAX) - tokens_.size()) {
        fail("%s: %s has %zu entries", f.path().c_str(), kv_merges, merges.size());
    }
    bpe_merges_.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
        // "left right"; the left part is never empty, so the separator is the first space after it.
        const std::string & m   = merges[i];
        const size_t        sep = m.size() < 2 ? std::string::npos : m.find(' ', 1);
        if (sep == std::string::npos || sep + 1 == m.size()) {
            fail("%s: %s[%zu] = '%s' is not two pieces separated by a space", f.path().c_str(), kv_merges, i,
                 m.c_str());
        }
        const std::string left  = m.substr(0, sep);
        const std::string right = m.substr(sep + 1);
        const int32_t     l     = bpe_symbol(left);
        const int32_t     r     = bpe_symbol(right);
        // A repeated pair keeps its first (lowest) rank.
        bpe_merges_.emplace(merge_key(l, r), bpe_merge{int32_t(i), bpe_symbol(left + right)});
    }
    for (int b = 0; b < 256; ++b) {
        const std::string ch = utf8_encode(byte_to_gpt2_cpt(uint8_t(b)));
        const auto        it = bpe_extra_.find(ch);
        bpe_byte_symbols_[b] = byte_ids_[b] >= 0 ? byte_ids_[b] : it != bpe_extra_.end() ? it->second : -1;
    }
}

void vocab::tokenize_bpe(const std::string & text, std::vector<int32_t> & out) const {
    for (const text_span & w : pretokenize(pre_, text)) {
        bpe_word(text.substr(w.offset, w.len), out);
    }
}

void vocab::bpe_word(const std::string & word, std::vector<int32_t> & out) const {
    if (ignore_merges_) {
        std::string spelled;
        for (char c : word) {
            spelled += utf8_encode(byte_to_gpt2_cpt(uint8_t(c)));
        }
        const int32_t id = find_token(spelled);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }

    std::vector<bpe_symbol_state> symbols(word.size());
    for (size_t i = 0; i < word.size(); ++i) {
        symbols[i] = {bpe_byte_symbols_[uint8_t(word[i])], uint32_t(i), 1, int32_t(i) - 1, int32_t(i) + 1};
    }
    symbols.back().next = -1;

    std::priority_queue<bpe_candidate, std::vector<bpe_candidate>, bpe_candidate_after> queue;
    const auto try_add = [&](int32_t left, int32_t right) {
        if (left < 0 || right < 0 || symbols[left].id < 0 || symbols[right].id < 0) {
            return;
        }
        const auto it = bpe_merges_.find(merge_key(symbols[left].id, symbols[right].id));
        if (it != bpe_merges_.end()) {
            queue.push({it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
        }
    };
    for (size_t i = 1; i < symbols.size(); ++i) {
        try_add(int32_t(i - 1), int32_t(i));
    }

    while (!queue.empty()) {
        const bpe_candidate c = queue.top();
        queue.pop();
        bpe_symbol_state & left  = symbols[c.left];
        bpe_symbol_state & right = symbols[c.right];
        if (left.len == 0 || right.len == 0 || left.next != c.right || left.id != c.left_id ||
            right.id != c.right_id) {
            continue;
        }
        left.id = c.result;
        left.len += right.len;
        right.len = 0;
        left.next = right.next;
        if (right.next >= 0) {
            symbols[right.next].prev = c.left;
        }
        try_add(left.prev, c.left);
        try_add(c.left, left.next);
    }

    for (int32_t i = 0; i >= 0; i = symbols[i].next) {
        const bpe_symbol_state & s = symbols[i];
        if (s.id >= 0 && s.id < n_tokens()) {
            out.push_back(s.id);
            continue;
        }
        // A merge whose result is no token (a malformed vocabulary): its bytes one by one, as far as
        // the alphabet has tokens.
        for (uint32_t k = 0; k < s.len; ++k) {
            const int32_t byte_id = byte_token(uint8_t(word[s.offset + k]));
            if (byte_id >= 0) {
                out.push_back(byte_id);
            }
        }
    }
}

}  // namespace tca
