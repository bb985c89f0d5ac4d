// Token sampling: the llama.cpp default chain over one row of logits.
//
// Order: penalties -> top-k -> top-p -> min-p -> temperature -> draw. The filters act on the penalized
// logits at temperature 1 (as llama.cpp does); the temperature then reshapes the survivors only.
// temperature <= 0 means greedy: the argmax of the penalized logits.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace tca {

struct sampler_params {
    uint64_t seed           = 0;
    float temperature       = 0.8f;
    int32_t top_k           = 40;     // <= 0: keep all
    float top_p             = 0.95f;  // >= 1: keep all
    float min_p             = 0.05f;  // <= 0: keep all
    float repeat_penalty    = 1.0f;   // 1: off
    int32_t repeat_last_n   = 64;     // 0: penalties off, < 0: every accepted token
    float presence_penalty  = 0.0f;
    float frequency_penalty = 0.0f;
};

// A fixed, portable generator (PCG32, XSH-RR output) so that the same seed gives the same tokens on
// every platform and standard library.
class sampler_rng {
  public:
    explicit sampler_rng(uint64_t seed);
    uint32_t next_u32();
    double next_unit();  // uniform in [0, 1), 53 random bits

  private:
    uint64_t state = 0;
    uint64_t inc   = 0;
};

struct token_prob {
    int32_t id;
    float p;
};

class sampler {
  public:
    explicit sampler(const sampler_params & params);

    // Draws one token from logits [n_vocab]. Throws tca::error when no token has a finite logit.
    int32_t sample(const float * logits, int64_t n_vocab);
    // The distribution sample() draws from: the surviving tokens and their probabilities (sum 1),
    // sorted by decreasing probability. Greedy gives the argmax with p = 1.
    std::vector<token_prob> probs(const float * logits, int64_t n_vocab) const;
    // Adds a token to the penalty history (the last repeat_last_n accepted tokens).
    void accept(int32_t token);
    // Clears the history and restarts the generator from the seed.
    void reset();

    const sampler_params & params() const { return params_; }

  private:
    sampler_params params_;
    sampler_rng rng_;
    std::deque<int32_t> history_;  // oldest first, at most repeat_last_n tokens

    void penalize(std::vector<float> & logits) const;
};

}  // namespace tca
