#include "unicode.h"

#include <algorithm>

namespace tca {

namespace {

constexpr uint32_t max_cpt = 0x10FFFF;
constexpr uint32_t n_bmp   = 0x10000;

unicode_category category_by_search(uint32_t cpt) {
    const unicode_range * end = unicode_category_ranges + unicode_n_category_ranges;
    // The last range whose start is <= cpt; the table starts at U+0000.
    const unicode_range * it =
        std::upper_bound(unicode_category_ranges, end, cpt,
                         [](uint32_t c, const unicode_range & r) { return c < r.first; });
    return unicode_category((it - 1)->category);
}

// Categories of the Basic Multilingual Plane, flattened once: the tokenizers look up every code point
// of their input, nearly all of them in the BMP. [n_bmp]
const std::vector<uint8_t> & bmp_categories() {
    static const std::vector<uint8_t> table = [] {
        std::vector<uint8_t> t(n_bmp);
        for (uint32_t c = 0; c < n_bmp; ++c) {
            t[c] = uint8_t(category_by_search(c));
        }
        return t;
    }();
    return table;
}

bool is_white_space(uint32_t cpt) {
    return std::binary_search(unicode_white_space, unicode_white_space + unicode_n_white_space, cpt);
}

bool is_continuation(unsigned char b) {
    return (b & 0xC0) == 0x80;
}

}  // namespace

unicode_category unicode_cpt_category(uint32_t cpt) {
    if (cpt < n_bmp) {
        return unicode_category(bmp_categories()[cpt]);
    }
    if (cpt > max_cpt) {
        return unicode_category::Cn;
    }
    return category_by_search(cpt);
}

unicode_cpt_flags unicode_cpt_flags_of(uint32_t cpt) {
    using uc                   = unicode_category;
    const unicode_category cat = unicode_cpt_category(cpt);
    unicode_cpt_flags      f;
    f.is_letter     = cat >= uc::Ll && cat <= uc::Lu;
    f.is_mark       = cat >= uc::Mc && cat <= uc::Mn;
    f.is_number     = cat >= uc::Nd && cat <= uc::No;
    f.is_whitespace = is_white_space(cpt);
    return f;
}

utf8_unit utf8_decode_one(const char * s, size_t n, size_t offset) {
    const auto      b0      = (unsigned char) s[offset];
    const utf8_unit invalid = {unicode_invalid_cpt, uint32_t(offset), 1};
    if (b0 < 0x80) {
        return {b0, uint32_t(offset), 1};
    }
    uint32_t len;
    uint32_t cpt;
    uint32_t min_cpt;  // smaller values are overlong encodings
    if ((b0 & 0xE0) == 0xC0) {
        len = 2, cpt = b0 & 0x1F, min_cpt = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        len = 3, cpt = b0 & 0x0F, min_cpt = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        len = 4, cpt = b0 & 0x07, min_cpt = 0x10000;
    } else {
        return invalid;
    }
    if (offset + len > n) {
        return invalid;
    }
    for (uint32_t i = 1; i < len; ++i) {
        const auto b = (unsigned char) s[offset + i];
        if (!is_continuation(b)) {
            return invalid;
        }
        cpt = (cpt << 6) | (b & 0x3F);
    }
    if (cpt < min_cpt || cpt > max_cpt || (cpt >= 0xD800 && cpt <= 0xDFFF)) {
        return invalid;
    }
    return {cpt, uint32_t(offset), len};
}

std::vector<utf8_unit> utf8_decode(const std::string & s) {
    std::vector<utf8_unit> units;
    units.reserve(s.size());
    for (size_t offset = 0; offset < s.size();) {
        const utf8_unit u = utf8_decode_one(s.data(), s.size(), offset);
        units.push_back(u);
        offset += u.len;
    }
    return units;
}

std::string utf8_encode(uint32_t cpt) {
    std::string out;
    if (cpt < 0x80) {
        out += char(cpt);
    } else if (cpt < 0x800) {
        out += char(0xC0 | (cpt >> 6));
        out += char(0x80 | (cpt & 0x3F));
    } else if (cpt < 0x10000) {
        out += char(0xE0 | (cpt >> 12));
        out += char(0x80 | ((cpt >> 6) & 0x3F));
        out += char(0x80 | (cpt & 0x3F));
    } else {
        out += char(0xF0 | (cpt >> 18));
        out += char(0x80 | ((cpt >> 12) & 0x3F));
        out += char(0x80 | ((cpt >> 6) & 0x3F));
        out += char(0x80 | (cpt & 0x3F));
    }
    return out;
}

namespace {

// The bytes GPT-2 keeps as themselves: '!'..'~', U+00A1..U+00AC, U+00AE..U+00FF.
bool gpt2_keeps_byte(uint32_t b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

// [256]: byte -> code point of the alphabet.
const std::vector<uint32_t> & gpt2_byte_table() {
    static const std::vector<uint32_t> table = [] {
        std::vector<uint32_t> t(256);
        uint32_t              n_moved = 0;
        for (uint32_t b = 0; b < 256; ++b) {
            t[b] = gpt2_keeps_byte(b) ? b : 0x100 + n_moved++;
        }
        return t;
    }();
    return table;
}

}  // namespace

uint32_t byte_to_gpt2_cpt(uint8_t byte) {
    return gpt2_byte_table()[byte];
}

int gpt2_cpt_to_byte(uint32_t cpt) {
    // Inverse of the table: the alphabet lies within U+0000..U+0143 (68 bytes moved to U+0100..).
    static const std::vector<int> inverse = [] {
        std::vector<int> inv(0x100 + 68, -1);
        for (int b = 0; b < 256; ++b) {
            inv[gpt2_byte_table()[b]] = b;
        }
        return inv;
    }();
    return cpt < inverse.size() ? inverse[cpt] : -1;
}

}  // namespace tca
