// The CUDA attention core: one tensor-core kernel for dense and TCA attention, prefill and decode.
// Semantics are the CPU core's (engine/attention.h): for KV head ig, query i attends to the cache entries
// [lo[ig, i], hi[ig, i]) and to the entries of the sorted list extra[ig] that lie below lo[ig, i].
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tca {

struct attn_cuda_params {
    int n_head;
    int n_head_kv;
    int head_dim;  // 64 or 128
    float scale;   // usually 1/sqrt(head_dim)
    int64_t n_q;

    const float * q;  // [n_q, n_head, head_dim] fp32
    float * out;      // [n_q, n_head, head_dim] fp32

    // One pointer per KV head (a device array of device pointers): rows [n_entries, head_dim] fp16.
    const __half * const * k;
    const __half * const * v;

    const int32_t * lo;            // [n_head_kv, n_q]
    const int32_t * hi;            // [n_head_kv, n_q]
    const int32_t * extra;         // sorted lists of distinct entries per KV head, joined; may be null
    const int32_t * extra_offset;  // [n_head_kv + 1] offsets into extra; null when there are no extras

    // Upper bound of the keys any query sees (cache length): sizes the split over keys.
    int64_t n_keys_max;
    // Entries below n_stable were written before the kernel that precedes this launch in the stream started
    // (in an earlier step; the new tokens' rows are at or above it): decode reads them before it waits for
    // that kernel. 0: nothing is read early.
    int64_t n_stable;
    // Splits of each query tile's key list, merged afterwards; 0 picks one from the device size.
    int n_split;

    float * work;  // workspace of attention_cuda_work_bytes(p) bytes (may be null when that is 0)

    // Decode (n_q * n_head / n_head_kv <= 16) with several splits hands out K/V tiles through one counter
    // per KV head, [n_head_kv], which must be zero before a launch and which the launch leaves zero. Null:
    // each split takes a fixed share of the tiles.
    int * tile_next;
};

// Splits the launch will use for these parameters (resolves n_split = 0).
int attention_cuda_n_split(const attn_cuda_params & p);

// Bytes of workspace that attention_cuda needs (partial results of the key splits).
size_t attention_cuda_work_bytes(const attn_cuda_params & p);

// Exact softmax attention of every query row. Throws tca::error for an unsupported head_dim, a head
// count that is not a multiple of n_head_kv, or a missing workspace.
void attention_cuda(const attn_cuda_params & p, cudaStream_t stream);

// TCA scores (engine/attention.h attention_group_probs): q [n_group, head_dim] fp32, k [n_entries,
// head_dim] fp16. Each query row is normalised over the entries [norm_begin, norm_end); the group mean of
// the probabilities is written for the entries [out_begin, out_end) into out [out_end - out_begin].
// work: attention_group_probs_work_bytes(...) bytes.
size_t attention_group_probs_work_bytes(int n_group, int64_t norm_begin, int64_t norm_end);
void attention_group_probs_cuda(const float * q, int n_group, int head_dim, float scale, const __half * k,
                                int64_t norm_begin, int64_t norm_end, int64_t out_begin, int64_t out_end,
                                float * out, float * work, cudaStream_t stream);

}  // namespace tca
