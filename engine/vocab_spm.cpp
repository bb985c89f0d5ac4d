// SentencePiece-style tokenization: spaces become U+2581, then adjacent pieces merge while their
// concatenation is a token, the highest-scoring merge first; what no token covers falls back to
// byte tokens <0xXX>.
#include <cstdint>
#include <queue>

#include "unicode.h"
#include "vocab.h"

namespace tca {

namespace {

struct spm_symbol {
    uint32_t offset;  // bytes [offset, offset + len) of the escaped text; len 0 once merged away
    uint32_t len;
    int32_t  prev;  // neighbours in the chain of live symbols, -1 at the ends
    int32_t  next;
};

struct spm_bigram {
    float    score;  // of the merged token
    int32_t  left;   // symbol index; the right one is symbols[left].next when queued
    int32_t  right;
    uint32_t len;  // bytes of the merge: stale when either side has changed since
};

// Priority: the highest score, then the leftmost.
struct spm_bigram_less {
    bool operator()(const spm_bigram & a, const spm_bigram & b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

}  // namespace

void vocab::tokenize_spm(const std::string & raw, std::vector<int32_t> & out) const {
    std::string text;
    text.reserve(raw.size() + raw.size() / 4);
    for (char c : raw) {
        if (c == ' ') {
            text += "\xE2\x96\x81";
        } else {
            text += c;
        }
    }

    // Control, unknown, byte and unused tokens are never formed from text.
    const auto find_piece = [&](uint32_t offset, uint32_t len) -> int32_t {
        const int32_t id = find_token(text.substr(offset, len));
        if (id < 0) {
            return -1;
        }
        const token_type t = tokens_[id].type;
        return (t == token_type::normal || t == token_type::user_defined || t == token_type::undefined) ? id : -1;
    };

    std::vector<spm_symbol> symbols;  // one per code point to start with
    for (const utf8_unit & u : utf8_decode(text)) {
        const auto index = int32_t(symbols.size());
        symbols.push_back({u.offset, u.len, index - 1, index + 1});
    }
    if (symbols.empty()) {
        return;
    }
    symbols.back().next = -1;

    std::priority_queue<spm_bigram, std::vector<spm_bigram>, spm_bigram_less> queue;
    const auto try_add = [&](int32_t left, int32_t right) {
        if (left < 0 || right < 0) {
            return;
        }
        const uint32_t len = symbols[left].len + symbols[right].len;
        const int32_t  id  = find_piece(symbols[left].offset, len);
        if (id >= 0) {
            queue.push({tokens_[id].score, left, right, len});
        }
    };
    for (size_t i = 1; i < symbols.size(); ++i) {
        try_add(int32_t(i - 1), int32_t(i));
    }

    while (!queue.empty()) {
        const spm_bigram b = queue.top();
        queue.pop();
        spm_symbol & left  = symbols[b.left];
        spm_symbol & right = symbols[b.right];
        // Symbols only grow, so an unchanged total length means both sides are as when queued.
        if (left.len == 0 || right.len == 0 || left.len + right.len != b.len) {
            continue;
        }
        left.len += right.len;
        right.len = 0;
        left.next = right.next;
        if (right.next >= 0) {
            symbols[right.next].prev = b.left;
        }
        try_add(left.prev, b.left);
        try_add(b.left, left.next);
    }

    for (int32_t i = 0; i >= 0; i = symbols[i].next) {
        const spm_symbol & s  = symbols[i];
        const int32_t      id = find_piece(s.offset, s.len);
        if (id >= 0) {
            out.push_back(id);
            continue;
        }
        // Merged symbols are tokens, so this is one code point (or invalid byte) no token covers.
        for (uint32_t k = 0; k < s.len; ++k) {
            const int32_t byte_id = byte_token(uint8_t(text[s.offset + k]));
            if (byte_id >= 0) {
                out.push_back(byte_id);
            } else if (unk() >= 0) {
                out.push_back(unk());
            }
        }
    }
}

}  // namespace tca
