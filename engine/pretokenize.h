// Pre-tokenizers of byte-level BPE vocabularies: split text into words before the merges run.
//
// Each model's tokenizer splits with a regex; the regexes below are facts of those tokenizers, matched
// here by hand over Unicode categories (leftmost alternative wins, greedy, as a backtracking regex
// engine does). Text a regex does not match stays a word of its own.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace tca {

enum class pretokenizer {
    // GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    gpt2,
    // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    //          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    // (the case-insensitive group taken as ASCII: '[sS]|'[tT]|..., as llama.cpp adapts it)
    llama3,
    // Qwen2: as Llama 3 with \p{N} (one digit per word) in place of \p{N}{1,3}
    qwen2,
    // SmolLM: first each \p{N} alone, then the GPT-2 regex within every piece
    smollm,
};

// A word: bytes [offset, offset + len) of the text.
struct text_span {
    size_t offset;
    size_t len;
};

// Splits text into words covering it exactly, in order. Invalid UTF-8 bytes count as symbols
// ([^\s\p{L}\p{N}]), so no byte is lost.
std::vector<text_span> pretokenize(pretokenizer kind, const std::string & text);

}  // namespace tca
