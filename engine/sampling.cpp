#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "common.h"

namespace tca {

sampler_rng::sampler_rng(uint64_t seed) {
    // PCG32 seeding: the stream is fixed, the seed sets the starting state.
    inc   = (0xda3e39cb94b95bdbULL << 1u) | 1u;
    state = 0;
    next_u32();
    state += seed;
    next_u32();
}

uint32_t sampler_rng::next_u32() {
    const uint64_t old    = state;
    state                 = old * 6364136223846793005ULL + inc;
    const uint32_t shift  = uint32_t(((old >> 18u) ^ old) >> 27u);
    const uint32_t rotate = uint32_t(old >> 59u);
    return (shift >> rotate) | (shift << ((32u - rotate) & 31u));
}

double sampler_rng::next_unit() {
    const uint64_t hi = next_u32() >> 5;  // 27 bits
    const uint64_t lo = next_u32() >> 6;  // 26 bits
    return double((hi << 26) | lo) * (1.0 / 9007199254740992.0);
}

sampler::sampler(const sampler_params & params) : params_(params), rng_(params.seed) {
    if (!(params.top_p >= 0.0f) || !(params.min_p >= 0.0f) || std::isnan(params.temperature)) {
        fail("sampler: top_p (%g), min_p (%g) must be >= 0 and temperature (%g) a number", params.top_p,
             params.min_p, params.temperature);
    }
    if (!(params.repeat_penalty > 0.0f)) {
        fail("sampler: repeat_penalty must be > 0, got %g", params.repeat_penalty);
    }
}

void sampler::accept(int32_t token) {
    if (params_.repeat_last_n == 0) {
        return;
    }
    history_.push_back(token);
    if (params_.repeat_last_n > 0 && history_.size() > size_t(params_.repeat_last_n)) {
        history_.pop_front();
    }
}

void sampler::reset() {
    history_.clear();
    rng_ = sampler_rng(params_.seed);
}

// llama.cpp's penalties: a token seen c > 0 times in the history has its logit divided by
// repeat_penalty when positive (multiplied when negative), then lowered by
// c * frequency_penalty + presence_penalty.
void sampler::penalize(std::vector<float> & logits) const {
    if (history_.empty()) {
        return;
    }
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : history_) {
        if (t >= 0 && size_t(t) < logits.size()) {
            counts[t]++;
        }
    }
    for (const auto & [t, c] : counts) {
        float & l = logits[size_t(t)];
        l         = l <= 0.0f ? l * params_.repeat_penalty : l / params_.repeat_penalty;
        l -= float(c) * params_.frequency_penalty + params_.presence_penalty;
    }
}

std::vector<token_prob> sampler::probs(const float * logits, int64_t n_vocab) const {
    if (n_vocab <= 0) {
        fail("sampler: empty logits");
    }
    std::vector<float> l(logits, logits + n_vocab);
    penalize(l);

    struct cand {
        int32_t id;
        float logit;
    };
    std::vector<cand> c;
    c.reserve(size_t(n_vocab));
    for (int64_t i = 0; i < n_vocab; i++) {
        if (std::isnan(l[size_t(i)])) {
            fail("sampler: logit of token %lld is NaN", (long long)i);
        }
        if (l[size_t(i)] > -INFINITY) {
            c.push_back({int32_t(i), l[size_t(i)]});
        }
    }
    if (c.empty()) {
        fail("sampler: no token has a finite logit");
    }
    // Ties break towards the lower id so that the order (and greedy) is deterministic.
    auto higher = [](const cand & a, const cand & b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };

    if (params_.temperature <= 0.0f) {
        return {{std::min_element(c.begin(), c.end(), higher)->id, 1.0f}};
    }

    // top-k: sorts only the k best.
    size_t n = c.size();
    if (params_.top_k > 0 && size_t(params_.top_k) < n) {
        n = size_t(params_.top_k);
        std::partial_sort(c.begin(), c.begin() + n, c.end(), higher);
        c.resize(n);
    } else {
        std::sort(c.begin(), c.end(), higher);
    }

    // Softmax at temperature 1 over the survivors, for top-p and min-p; double sums keep it exact.
    auto softmax = [&](float temp) {
        std::vector<double> p(c.size());
        double sum = 0.0;
        for (size_t i = 0; i < c.size(); i++) {
            p[i] = std::exp(double(c[i].logit - c[0].logit) / double(temp));
            sum += p[i];
        }
        for (double & x : p) {
            x /= sum;
        }
        return p;
    };

    // top-p: the shortest prefix whose mass reaches top_p (at least one token).
    if (params_.top_p < 1.0f) {
        const std::vector<double> p = softmax(1.0f);
        double cum                  = 0.0;
        size_t keep                 = p.size();
        for (size_t i = 0; i < p.size(); i++) {
            cum += p[i];
            if (cum >= double(params_.top_p)) {
                keep = i + 1;
                break;
            }
        }
        c.resize(keep);
    }

    // min-p: tokens at least min_p times as likely as the best, i.e. logit >= max + log(min_p).
    if (params_.min_p > 0.0f) {
        const float threshold = c[0].logit + std::log(params_.min_p);
        size_t keep           = 1;
        while (keep < c.size() && c[keep].logit >= threshold) {
            keep++;
        }
        c.resize(keep);
    }

    const std::vector<double> p = softmax(params_.temperature);
    std::vector<token_prob> out(c.size());
    for (size_t i = 0; i < c.size(); i++) {
        out[i] = {c[i].id, float(p[i])};
    }
    return out;
}

int32_t sampler::sample(const float * logits, int64_t n_vocab) {
    const std::vector<token_prob> p = probs(logits, n_vocab);
    if (p.size() == 1) {
        return p[0].id;
    }
    double sum = 0.0;
    for (const token_prob & t : p) {
        sum += double(t.p);
    }
    const double u = rng_.next_unit() * sum;
    double cum     = 0.0;
    for (const token_prob & t : p) {
        cum += double(t.p);
        if (u < cum) {
            return t.id;
        }
    }
    return p.back().id;  // u rounded up to the total
}

}  // namespace tca
