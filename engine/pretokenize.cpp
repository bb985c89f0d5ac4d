#include "pretokenize.h"

#include <algorithm>
#include <cstdint>

#include "unicode.h"

namespace tca {

namespace {

// The text as code points with the classes the regexes test, and a piece [begin, end) of it that one
// regex sees: lookarounds and runs stop at the piece's end as at the end of the text.
class cpt_piece {
  public:
    cpt_piece(const std::vector<uint32_t> & cpts, const std::vector<unicode_cpt_flags> & flags, size_t begin,
              size_t end)
        : cpts_(cpts), flags_(flags), begin_(begin), end_(end) {}

    size_t begin() const { return begin_; }
    size_t end() const { return end_; }

    // Code point at i, or 0 outside the piece (0 is in no class the regexes test by value).
    uint32_t cpt(size_t i) const { return i < end_ ? cpts_[i] : 0; }
    bool     letter(size_t i) const { return i < end_ && flags_[i].is_letter; }
    bool     number(size_t i) const { return i < end_ && flags_[i].is_number; }
    bool     space(size_t i) const { return i < end_ && flags_[i].is_whitespace; }
    // [^\s\p{L}\p{N}]
    bool other(size_t i) const {
        return i < end_ && !flags_[i].is_whitespace && !flags_[i].is_letter && !flags_[i].is_number;
    }
    bool newline(size_t i) const { return cpt(i) == '\r' || cpt(i) == '\n'; }

    // First index at or after i where pred fails.
    template <typename Pred>
    size_t run(size_t i, Pred pred) const {
        while (i < end_ && pred(i)) {
            ++i;
        }
        return i;
    }

  private:
    const std::vector<uint32_t> &          cpts_;
    const std::vector<unicode_cpt_flags> & flags_;
    size_t                                 begin_;
    size_t                                 end_;
};

uint32_t ascii_lower(uint32_t c) {
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

// 's|'t|'re|'ve|'m|'ll|'d at i (case-insensitive when ignore_case): the match length, or 0.
size_t match_contraction(const cpt_piece & p, size_t i, bool ignore_case) {
    if (p.cpt(i) != '\'' || i + 1 >= p.end()) {
        return 0;
    }
    const auto lower = [&](size_t k) { return ignore_case ? ascii_lower(p.cpt(k)) : p.cpt(k); };
    const uint32_t c1 = lower(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        return 2;
    }
    if (i + 2 >= p.end()) {
        return 0;
    }
    const uint32_t c2 = lower(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        return 3;
    }
    return 0;
}

// \s+(?!\S) at i, where the whitespace run is [i, k): all of it before the end of the piece, else
// all but the last (which the next word takes as its prefix); 0 when that leaves nothing.
size_t match_space_not_before_nonspace(const cpt_piece & p, size_t i, size_t k) {
    if (k == p.end()) {
        return k - i;
    }
    return k - i >= 2 ? k - i - 1 : 0;
}

// The GPT-2 regex at i: the length of the match, or 0.
size_t match_gpt2(const cpt_piece & p, size_t i) {
    if (size_t n = match_contraction(p, i, false)) {
        return n;
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': a space is no letter, number or symbol, so the
    // class is tested after an optional leading space.
    const size_t j = i + (p.cpt(i) == ' ' ? 1 : 0);
    if (p.letter(j)) {
        return p.run(j, [&](size_t k) { return p.letter(k); }) - i;
    }
    if (p.number(j)) {
        return p.run(j, [&](size_t k) { return p.number(k); }) - i;
    }
    if (p.other(j)) {
        return p.run(j, [&](size_t k) { return p.other(k); }) - i;
    }
    if (p.space(i)) {
        return match_space_not_before_nonspace(p, i, p.run(i, [&](size_t k) { return p.space(k); }));
    }
    return 0;
}

// The Llama 3 / Qwen2 regex at i; max_digits is 3 (\p{N}{1,3}) or 1 (\p{N}).
size_t match_llama3(const cpt_piece & p, size_t i, size_t max_digits) {
    if (size_t n = match_contraction(p, i, true)) {
        return n;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (p.letter(i)) {
        return p.run(i, [&](size_t k) { return p.letter(k); }) - i;
    }
    if (!p.newline(i) && !p.number(i) && p.letter(i + 1)) {
        return p.run(i + 1, [&](size_t k) { return p.letter(k); }) - i;
    }
    if (p.number(i)) {
        return std::min(p.run(i, [&](size_t k) { return p.number(k); }) - i, max_digits);
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const size_t j = i + (p.cpt(i) == ' ' ? 1 : 0);
    if (p.other(j)) {
        const size_t k = p.run(j, [&](size_t m) { return p.other(m); });
        return p.run(k, [&](size_t m) { return p.newline(m); }) - i;
    }
    if (!p.space(i)) {
        return 0;
    }
    const size_t k = p.run(i, [&](size_t m) { return p.space(m); });
    // \s*[\r\n]+: the whitespace run up to its last \r or \n
    for (size_t m = k; m > i; --m) {
        if (p.newline(m - 1)) {
            return m - i;
        }
    }
    // \s+(?!\S), else \s+
    const size_t n = match_space_not_before_nonspace(p, i, k);
    return n > 0 ? n : k - i;
}

// Runs a regex matcher over one piece: matches become words, and so does each stretch between them.
template <typename Match>
void split_piece(const cpt_piece & p, Match match, std::vector<std::pair<size_t, size_t>> & words) {
    size_t gap = p.begin();  // start of text no match has taken yet
    for (size_t i = p.begin(); i < p.end();) {
        const size_t n = match(p, i);
        if (n == 0) {
            ++i;
            continue;
        }
        if (gap < i) {
            words.emplace_back(gap, i);
        }
        words.emplace_back(i, i + n);
        i += n;
        gap = i;
    }
    if (gap < p.end()) {
        words.emplace_back(gap, p.end());
    }
}

}  // namespace

std::vector<text_span> pretokenize(pretokenizer kind, const std::string & text) {
    const std::vector<utf8_unit>   units = utf8_decode(text);
    const size_t                   n     = units.size();
    std::vector<uint32_t>          cpts(n);
    std::vector<unicode_cpt_flags> flags(n);
    for (size_t i = 0; i < n; ++i) {
        cpts[i]  = units[i].cpt;
        flags[i] = unicode_cpt_flags_of(units[i].cpt);
    }

    std::vector<std::pair<size_t, size_t>> words;  // [begin, end) in code points
    const cpt_piece                        all(cpts, flags, 0, n);
    switch (kind) {
        case pretokenizer::gpt2: split_piece(all, match_gpt2, words); break;
        case pretokenizer::llama3:
            split_piece(all, [](const cpt_piece & p, size_t i) { return match_llama3(p, i, 3); }, words);
            break;
        case pretokenizer::qwen2:
            split_piece(all, [](const cpt_piece & p, size_t i) { return match_llama3(p, i, 1); }, words);
            break;
        case pretokenizer::smollm:
            // Every number code point alone; the GPT-2 regex within the stretches between them.
            for (size_t i = 0; i < n;) {
                if (flags[i].is_number) {
                    words.emplace_back(i, i + 1);
                    ++i;
                    continue;
                }
                const size_t end = all.run(i, [&](size_t k) { return !flags[k].is_number; });
                split_piece(cpt_piece(cpts, flags, i, end), match_gpt2, words);
                i = end;
            }
            break;
    }

    std::vector<text_span> spans;
    spans.reserve(words.size());
    for (const auto & w : words) {
        const size_t offset = units[w.first].offset;
        const size_t last   = w.second - 1;
        spans.push_back({offset, units[last].offset + units[last].len - offset});
    }
    return spans;
}

}  // namespace tca
