#include "tca_config.h"

#include <algorithm>
#include <cmath>

#include "common.h"
#include "tca_select.h"

namespace tca {

namespace {

bool is_pow2(int64_t x) {
    return x > 0 && (x & (x - 1)) == 0;
}

}  // namespace

float tca_density(const float * p, int n_levels) {
    double sum = 0.0;
    for (int k = 0; k < n_levels; ++k) {
        sum += double(1 << k) * p[k];
    }
    return float(sum / double(1 << (n_levels - 1)));
}

int tca_decode_keep(const float * p, int n_levels) {
    double sum = 0.0;
    for (int k = 0; k < n_levels; ++k) {
        sum += double(int64_t(1) << k) * p[k];
    }
    return std::max(1, int(std::floor(sum + 1e-6)));
}

std::vector<float> tca_uniform_config(int block, float density) {
    const int          n_levels = tca_n_levels(block);
    std::vector<float> p(size_t(n_levels), 0.0f);
    const double       keep = std::clamp(double(density) * block, 1.0, double(block));
    int                j    = 0;
    while (j + 1 < n_levels && double(1 << (j + 1)) <= keep) {
        ++j;
    }
    if (j + 1 == n_levels) {
        p[size_t(j)] = 1.0f;
        return p;
    }
    const double lo = double(1 << j);
    const double hi = double(1 << (j + 1));
    const double w  = (hi - keep) / (hi - lo);  // share of blocks at the lower level
    p[size_t(j)]     = float(w);
    p[size_t(j + 1)] = float(1.0 - w);
    return p;
}

bool tca_config_read(const gguf_file & f, int n_layer, int n_head_kv, tca_config & cfg) {
    if (!f.has("tca.version")) {
        return false;
    }
    const char * path = f.path().c_str();
    if (f.get_u32("tca.version") != 1) {
        fail("%s: metadata 'tca.version' = %u is not supported (expected 1)", path, f.get_u32("tca.version"));
    }
    cfg.block  = int(f.get_u32("tca.block_size"));
    cfg.window = int(f.get_u32("tca.local_window"));
    cfg.alpha  = f.get_f32("tca.alpha");
    if (!is_pow2(cfg.block) || cfg.block < 2 || cfg.block > 4096) {
        fail("%s: metadata 'tca.block_size' = %d must be a power of two in [2, 4096]", path, cfg.block);
    }
    if (cfg.window < cfg.block) {
        fail("%s: metadata 'tca.local_window' = %d is smaller than tca.block_size = %d", path, cfg.window,
             cfg.block);
    }
    if (!(cfg.alpha >= 0.0f && cfg.alpha <= 1.0f)) {
        fail("%s: metadata 'tca.alpha' = %g must lie in [0, 1]", path, double(cfg.alpha));
    }
    cfg.n_levels          = tca_n_levels(cfg.block);
    const size_t n_rows   = size_t(n_layer) * n_head_kv;
    cfg.head_config       = f.get_arr_f32("tca.head_config");
    if (cfg.head_config.size() != n_rows * cfg.n_levels) {
        fail("%s: metadata 'tca.head_config' has %zu values, expected n_layer * n_head_kv * n_levels = %zu", path,
             cfg.head_config.size(), n_rows * cfg.n_levels);
    }
    for (size_t r = 0; r < n_rows; ++r) {
        const std::string what = strfmt("%s: metadata 'tca.head_config' row %zu (layer %zu, KV head %zu)", path, r,
                                        r / n_head_kv, r % n_head_kv);
        tca_config_check(&cfg.head_config[r * cfg.n_levels], cfg.n_levels, cfg.block, what.c_str());
    }
    if (f.has("tca.head_density")) {
        const std::vector<float> density = f.get_arr_f32("tca.head_density");
        if (density.size() != n_rows) {
            fail("%s: metadata 'tca.head_density' has %zu values, expected n_layer * n_head_kv = %zu", path,
                 density.size(), n_rows);
        }
    }
    return true;
}

tca_config tca_config_resolve(const tca_config * from_file, int n_layer, int n_head_kv, const tca_overrides & o) {
    if (o.density > 1.0f) {
        fail("--tca-density %g must lie in (0, 1]", double(o.density));
    }
    if (from_file == nullptr && !(o.density > 0.0f)) {
        fail("attention 'tca' needs a calibrated model (tca.* metadata, written by tca-calibrate) or a "
             "uniform kept share (--tca-density X)");
    }
    tca_config cfg = from_file != nullptr ? *from_file : tca_config{};
    if (o.block > 0) {
        cfg.block = o.block;
    }
    if (o.window > 0) {
        cfg.window = o.window;
    }
    if (o.alpha >= 0.0f) {
        cfg.alpha = o.alpha;
    }
    tca_params_check(cfg.block, cfg.window, cfg.alpha);

    const size_t n_rows   = size_t(n_layer) * n_head_kv;
    const int    n_levels = tca_n_levels(cfg.block);
    if (o.density > 0.0f) {
        const std::vector<float> p = tca_uniform_config(cfg.block, o.density);
        cfg.head_config.clear();
        for (size_t r = 0; r < n_rows; ++r) {
            cfg.head_config.insert(cfg.head_config.end(), p.begin(), p.end());
        }
    } else if (n_levels != cfg.n_levels) {
        // A block size other than the calibrated one: keep each head's kept share on the new levels.
        std::vector<float> remapped;
        for (size_t r = 0; r < n_rows; ++r) {
            const float              d = tca_density(&cfg.head_config[r * cfg.n_levels], cfg.n_levels);
            const std::vector<float> p = tca_uniform_config(cfg.block, d);
            remapped.insert(remapped.end(), p.begin(), p.end());
        }
        cfg.head_config = std::move(remapped);
    }
    cfg.n_levels = n_levels;
    return cfg;
}

}  // namespace tca
