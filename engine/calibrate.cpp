#include "calibrate.h"

#include <algorithm>
#include <limits>
#include <thread>

#include "common.h"
#include "context.h"
#include "tca_calib.h"
#include "thread_pool.h"

namespace tca {

calibration_result calibration_stats(const model & mo, const int32_t * tokens, int64_t L, int n_threads,
                                     const calibration_progress & progress) {
    if (mo.layers.empty()) {
        fail("tca-calibrate: the model was loaded vocab-only");
    }
    if (L < 1 || L > std::numeric_limits<int32_t>::max()) {
        fail("tca-calibrate: calibration sequence of %lld tokens (need 1 to 2^31-1)", (long long)L);
    }
    if (n_threads <= 0) {
        n_threads = std::max(1, int(std::thread::hardware_concurrency()));
    }
    const hparams & hp      = mo.hp;
    const size_t n_head_len = size_t(hp.n_head_kv) * size_t(L);  // one layer of m or s
    calibration_result res;
    res.n_tokens = L;
    res.m.assign(size_t(hp.n_layer) * n_head_len, 0.0f);
    res.s.assign(size_t(hp.n_layer) * n_head_len, 0.0f);

    context_params cp;
    cp.n_ctx     = int(L);
    cp.n_threads = n_threads;
    cp.attention = attention_mode::dense;
    context ctx(mo, cp);

    // The hook runs on the calling thread between the context's parallel regions, so the statistics
    // get a pool of their own (the context's pool is idle meanwhile).
    thread_pool pool(n_threads);
    ctx.set_layer_hook([&](int il, const float * q, const float * k, int64_t n) {
        if (n != L) {
            fail("tca-calibrate: layer hook saw %lld tokens, expected the whole sequence of %lld",
                 (long long)n, (long long)L);
        }
        tca_calib_layer(q, k, L, hp.n_head, hp.n_head_kv, hp.head_dim, &res.m[size_t(il) * n_head_len],
                        &res.s[size_t(il) * n_head_len], pool);
        if (progress) {
            progress(il + 1, hp.n_layer);
        }
    });
    std::vector<float> logits(size_t(hp.n_vocab));
    ctx.eval(tokens, L, false, logits.data());
    return res;
}

}  // namespace tca
