// TCA configuration: the per-(layer, KV head) budgets written by calibration into the GGUF (spec
// section 6), validated on load, and the run-time overrides of b, w and alpha.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"

namespace tca {

struct tca_config {
    int                block    = 128;   // b
    int                window   = 4096;  // w
    float              alpha    = 0.5f;
    int                n_levels = 8;     // log2(b) + 1: keep counts 1, 2, 4, ..., b
    std::vector<float> head_config;      // [n_layer, n_head_kv, n_levels], each row a distribution

    const float * head_p(int il, int ih, int n_head_kv) const {
        return &head_config[(size_t(il) * n_head_kv + ih) * n_levels];
    }
};

struct tca_overrides {
    int   block   = 0;     // 0: from the file
    int   window  = 0;     // 0: from the file
    float alpha   = -1.0f; // negative: from the file
    float density = -1.0f; // in (0, 1]: a uniform configuration of that kept share; <= 0: none
};

// Reads and validates the tca.* keys; returns false when the file has none (tca.version absent).
// Errors name the key: wrong type or length, a row that does not sum to 1, b not a power of two, w < b.
bool tca_config_read(const gguf_file & f, int n_layer, int n_head_kv, tca_config & cfg);

// The configuration a context runs with: the file's (if any) with the overrides applied. A block size
// other than the calibrated one keeps each head's kept share (density) on the new levels. Throws when
// there is neither calibration metadata nor a density override.
tca_config tca_config_resolve(const tca_config * from_file, int n_layer, int n_head_kv, const tca_overrides & o);

// Expected kept share of a head's global region: sum_k k * p[k] / b.
float tca_density(const float * p, int n_levels);

// The configuration over log2(b)+1 levels whose expected kept share is `density`: all mass on the two
// levels that bracket density * b, mixed to hit it exactly (clamped to [1/b, 1]).
std::vector<float> tca_uniform_config(int block, float density);

// Tokens a decode compaction keeps from a block: t = max(1, floor(sum_k k * p[k])) (spec section 5); the
// floor allows 1e-6 of rounding in p, as the NumPy reference does.
int tca_decode_keep(const float * p, int n_levels);

}  // namespace tca
