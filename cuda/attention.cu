// The attention core on tensor cores (flash-attention style, fp16 operands, fp32 accumulation).
//
// A CTA takes M packed query rows of one KV head (row r = query r / n_group, head r % n_group of the
// group, so K/V tiles are shared by the whole GQA group) and walks that tile's key list in tiles of
// kTileN keys: first the extra entries below the largest lo of the tile, then the dense range
// [min lo, max hi). Each key is masked per query with the CPU core's rule. Two shapes share the code
// (decode's tile math is in attention_decode.cuh):
//   prefill (M = 128): each of the 4 warps owns 32 rows (two m-tiles) and all keys of a tile;
//   decode  (M = 8 or 16): the 4 warps share the rows and take a quarter of each tile's keys each, and
//                     their softmax states are merged in shared memory at the end. Where no split has more
//                     than two tiles, a CTA of 8 warps takes its two tiles at once, four warps each.
// The key list may be split over gridDim.z CTAs; their partial results (output normalised within
// the split, plus its log-sum-exp) go to the workspace and a second kernel merges them. Prefill splits own
// contiguous ranges of tiles; decode splits take three tiles each and then draw from a counter per KV head.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "attention.cuh"
#include "attention_decode.cuh"
#include "common.cuh"

namespace tca {

namespace {

constexpr float kLog2e     = 1.4426950408889634f;
constexpr int kPrefillRows = 32 * kWarps;  // each warp owns two m-tiles of 16 rows
// Warps of a decode CTA that takes its tiles in pairs: a split's chain of two tile steps becomes one (H100,
// 8 KV heads, head_dim 128, graphs of 20 launches: 4K 9.43 -> 9.00 us, 2K 6.70 -> 6.50, 3K 8.4 -> 8.2). With
// no loop to carry, ptxas gives the instance 62 registers, so three CTAs of 256 threads fit on a
// multiprocessor, as three of 128 did.
constexpr int kPairWarps = 8;

// M: packed query rows per CTA, kPrefillRows for prefill or 8 or 16 for decode (which splits the keys);
// W: warps per CTA.
template <int D, int M_, int W = kWarps>
struct attn_cfg {
    static constexpr int M       = M_;
    static constexpr bool decode = M <= 16;
    static_assert(M == kPrefillRows || M == 8 || M == 16, "prefill rows or one or two decode n-tiles");
    using decode_state             = keys_tile<D, decode ? M / 8 : 1>;
    static constexpr int LD        = D + 8;  // shared row stride in halves: 16-byte pad, no bank conflicts
    static constexpr int LDO       = D + 4;  // row stride of the fp32 merge buffer
    static constexpr size_t tile   = size_t(kTileN) * LD;            // halves of one K or V tile
    static constexpr size_t kv     = 2 * 2 * tile * sizeof(__half);  // double-buffered K and V
    static constexpr size_t merge  = decode ? size_t(W) * M * (LDO + 2) * sizeof(float) : 0;
    static constexpr size_t region = kv > merge ? kv : merge;
    static constexpr size_t q      = size_t(M) * LD * sizeof(__half);
    static constexpr size_t smem   = region + q + 2 * kTileN * sizeof(int32_t);  // + key indices per buffer
};

// Where a CTA's results go: the final output, or the partials of its split.
struct attn_sink {
    float * out;
    float * work;
    int64_t n_out;         // output rows (queries x heads)
    const int32_t * orow;  // output row of each local row, -1 for padding rows (shared memory)
    int head_dim;
    int split;
    int n_split;

    // o: accumulated sums of p * v for N consecutive dims from d (d a multiple of N), l: sum of p, m: running
    // max (log2 domain), for local row r. N = 2 or 4: one vector store.
    template <int N>
    __device__ void emit(int r, int d, const float (&o)[N], float l, float m) const {
        static_assert(N == 2 || N == 4, "one float2 or float4 store");
        const int64_t row = orow[r];
        if (row < 0) {
            return;
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // a query with no key writes zeros, like the CPU
        float val[N];
#pragma unroll
        for (int i = 0; i < N; ++i) {
            val[i] = o[i] * inv;
        }
        float * dst = n_split == 1 ? out + row * head_dim + d : work + (split * n_out + row) * head_dim + d;
        if constexpr (N == 4) {
            *reinterpret_cast<float4 *>(dst) = make_float4(val[0], val[1], val[2], val[3]);
        } else {
            *reinterpret_cast<float2 *>(dst) = make_float2(val[0], val[1]);
        }
        if (n_split > 1 && d == 0) {
            work[int64_t(n_split) * n_out * head_dim + split * n_out + row] =
                l > 0.0f ? m + __log2f(l) : -INFINITY;
        }
    }
};

// Entries of the sorted list x[0, n) below bound, by one warp: each round its lanes read 32 evenly spaced
// entries at once and narrow the range 32-fold (a binary search by one thread made log2(n) dependent
// loads, ~14 for a TCA list at 128K keys, before a CTA could issue its first K/V load).
__device__ __forceinline__ int count_below(const int32_t * x, int n, int bound, int lane) {
    int a = 0;  // every entry before a is below bound, none from b on
    int b = n;
    while (b - a > 32) {
        const int step      = (b - a + 31) / 32;
        const int i         = a + lane * step;
        const int v         = i < b ? x[i] : INT_MAX;
        const unsigned low  = __ballot_sync(0xffffffff, i < b && v < bound);
        const unsigned high = __ballot_sync(0xffffffff, i < b && v >= bound);
        const int k         = __popc(low);  // the sampled entries below bound are lanes [0, k)
        b                   = high ? a + (__ffs(high) - 1) * step : b;
        a                   = k > 0 ? a + (k - 1) * step + 1 : a;
    }
    return a + __popc(__ballot_sync(0xffffffff, a + lane < b && x[a + lane] < bound));
}

template <int D, int M, int W>
__global__ void __launch_bounds__(32 * W) attn_kernel(const attn_cuda_params p, int n_split) {
    using C                   = attn_cfg<D, M, W>;
    constexpr bool SPLIT_KEYS = C::decode;
    constexpr bool PAIRS      = SPLIT_KEYS && W == kPairWarps;  // decode tiles taken two at a time
    constexpr int NTH         = 32 * W;
    pdl_trigger();  // the next kernel's CTAs may start (they wait for this kernel to end)
    if (!SPLIT_KEYS) {
        pdl_wait();  // decode waits after issuing the loads of K/V written before this step (below)
    }
    extern __shared__ __align__(16) unsigned char smem[];
    __half * s_kv   = reinterpret_cast<__half *>(smem);                      // [buf][K|V][kTileN][LD]
    __half * s_q    = reinterpret_cast<__half *>(smem + C::region);          // [M][LD]
    int32_t * s_key = reinterpret_cast<int32_t *>(smem + C::region + C::q);  // [buf][kTileN] index or -1
    // lo_min, hi_max, lo_max, hi_min; n_ex; extras below lo_min; [t_lo, t_hi): list positions whose dense
    // keys lie in every row's range [lo_max, hi_min). Tiles of those need no mask; read from here in the loop
    // rather than held in registers.
    __shared__ int s_ext[8];
    // Per local row: output row (query * n_head + head, -1 for padding) and key range. Computed once: the
    // 64-bit divisions by n_group would otherwise cost microseconds in the prologue and the epilogue.
    __shared__ int32_t s_orow[C::M];
    __shared__ int32_t s_rlo[C::M];
    __shared__ int32_t s_rhi[C::M];
    __shared__ int s_sched[2];  // dynamic tile schedule: the tiles thread 0 fetched, read one step later

    const int warp    = threadIdx.x / 32;
    const int lane    = threadIdx.x % 32;
    const int ig      = blockIdx.y;
    const int split   = blockIdx.z;
    const int n_group = p.n_head / p.n_head_kv;

    // Query tiles run last-first: in causal prefill the later tiles have the most keys, and starting them
    // first shortens the tail of the launch.
    const int64_t n_rows  = p.n_q * n_group;
    const int64_t row0    = int64_t(gridDim.x - 1 - blockIdx.x) * C::M;
    const int32_t * lo    = p.lo + int64_t(ig) * p.n_q;
    const int32_t * hi    = p.hi + int64_t(ig) * p.n_q;
    const int32_t * extra = p.extra_offset ? p.extra + p.extra_offset[ig] : nullptr;
    const int n_extra     = p.extra_offset ? p.extra_offset[ig + 1] - p.extra_offset[ig] : 0;
    const __half * k_head = p.k[ig];
    const __half * v_head = p.v[ig];

    // The rows' table, and the extents of their key ranges.
    if (threadIdx.x == 0) {
        s_ext[0] = INT_MAX;
        s_ext[1] = INT_MIN;
        s_ext[2] = INT_MIN;
        s_ext[3] = INT_MAX;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < C::M; r += NTH) {
        int orow = -1;
        int rl   = 0;
        int rh   = 0;
        if (row0 + r < n_rows) {
            const int pr = int(row0 + r);
            const int i  = pr / n_group;
            orow         = i * p.n_head + ig * n_group + (pr - i * n_group);
            rl           = lo[i];
            rh           = hi[i];
            atomicMin(&s_ext[0], rl);
            atomicMax(&s_ext[1], rh);
            atomicMax(&s_ext[2], rl);
            atomicMin(&s_ext[3], rh);
        }
        s_orow[r] = orow;
        s_rlo[r]  = rl;
        s_rhi[r]  = rh;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_ex = count_below(extra, n_extra, s_ext[2], lane);
        const int n_lo = s_ext[0] == s_ext[2] ? n_ex : count_below(extra, n_extra, s_ext[0], lane);
        if (lane == 0) {
            s_ext[4] = n_ex;
            s_ext[5] = n_lo;
            s_ext[6] = n_ex + s_ext[2] - s_ext[0];
            s_ext[7] = n_ex + min(s_ext[1], s_ext[3]) - s_ext[0];
        }
    }
    __syncthreads();
    const int lo_min  = s_ext[0];
    const int n_ex    = s_ext[4];
    const int n_dense = max(0, s_ext[1] - lo_min);
    const int n_keys  = n_ex + n_dense;
    const int n_tiles = (n_keys + kTileN - 1) / kTileN;

    auto key_at = [&](int tt) -> int {
        return tt < n_ex ? extra[tt] : (tt < n_keys ? lo_min + tt - n_ex : -1);
    };
    auto load_tile = [&](int tile, int buf) {
        const int t0 = tile * kTileN;
        if (threadIdx.x < kTileN) {
            s_key[buf * kTileN + threadIdx.x] = key_at(t0 + threadIdx.x);
        }
        __half * s_k = s_kv + (2 * buf) * C::tile;
        __half * s_v = s_k + C::tile;
        for (int c = threadIdx.x; c < kTileN * D / 8; c += NTH) {
            const int row     = c / (D / 8);
            const int col     = (c % (D / 8)) * 8;
            const int j       = key_at(t0 + row);
            const int64_t off = j >= 0 ? int64_t(j) * D + col : 0;
            const int bytes   = j >= 0 ? 16 : 0;  // missing keys are zero-filled: 0 * V stays finite
            cp_async_16(s_k + row * C::LD + col, k_head + off, bytes);
            cp_async_16(s_v + row * C::LD + col, v_head + off, bytes);
        }
    };

    // Decode computes little per tile and holds only two in shared memory: asking L2 for the tile after
    // next keeps more of the K/V stream in flight (one 128-byte line of K and one of V per thread).
    auto prefetch_tile = [&](int tile) {
        constexpr int lines = D * int(sizeof(__half)) / 128;  // per row
        for (int c = threadIdx.x; c < kTileN * lines; c += NTH) {
            const int j = key_at(tile * kTileN + c / lines);
            if (j >= 0) {
                const int64_t off = int64_t(j) * D + (c % lines) * 64;
                asm volatile("prefetch.global.L2 [%0];" ::"l"(k_head + off));
                asm volatile("prefetch.global.L2 [%0];" ::"l"(v_head + off));
            }
        }
    };

    // Decode splits take tiles from a counter per KV head when there is one (p.tile_next) and the list has
    // more than four tiles per split: multiprocessors stream K/V at different rates, and a fixed share per
    // CTA leaves the launch waiting for the slowest. Up to four, fixed shares spare thread 0's atomics, which
    // sit before the first barrier (H100, 8 KV heads: 4K 10.6 -> 10.2 us, 7K 15.9 -> 15.2, 8K 16.7 -> 16.3).
    constexpr int kPre      = 3;  // tiles every CTA takes before the counter's: split, + n_split, + 2 n_split
    const bool shared_tiles = SPLIT_KEYS && !PAIRS && n_split > 1 && p.tile_next && n_tiles > 4 * n_split;
    int * counter           = shared_tiles ? p.tile_next + ig : nullptr;
    int pending             = 0;  // thread 0: the counter value fetched one step ago
    // This CTA's tiles in order: cur (loading), nxt and nn (the next two; -1 past the end). Without a counter
    // a split owns one contiguous range of tiles.
    const int tb = counter ? 0 : int(int64_t(n_tiles) * split / n_split);
    const int te = counter ? 0 : int(int64_t(n_tiles) * (split + 1) / n_split);
    auto own     = [&](int k) {  // the k-th tile of this CTA, for k < kPre with a counter
        const int t = counter ? split + k * n_split : tb + k;
        return t < (counter ? n_tiles : te) ? t : -1;
    };
    int cur = own(0);
    int nxt = SPLIT_KEYS ? own(1) : -1;  // prefill derives it from cur (its registers are all taken)
    int nn  = SPLIT_KEYS ? own(2) : -1;

    // Decode: the first two tiles load before griddepcontrol.wait when all their keys lie below n_stable
    // (written before this step; the kernel before this one is the step's RoPE + K/V store), so that the
    // K/V stream starts while that kernel runs. Everything read before the wait comes from host copies.
    bool nxt_issued = false;
    if (SPLIT_KEYS) {
        auto stable = [&](int tile) {  // the largest key of a tile: its last extra or its last dense key
            const int t0   = tile * kTileN;
            const int last = min(t0 + kTileN, n_keys) - 1;
            const int ex   = min(last, n_ex - 1);
            return key_at(last) < p.n_stable && (ex < t0 || key_at(ex) < p.n_stable);
        };
        const bool cur_early = cur >= 0 && stable(cur);
        if (cur_early) {
            load_tile(cur, 0);
            cp_async_commit();
            nxt_issued = nxt >= 0 && stable(nxt);
            if (nxt_issued) {
                load_tile(nxt, 1);
                cp_async_commit();
            }
        }
        pdl_wait();
        if (counter && threadIdx.x == 0) {  // the previous launch's merge rezeroed the counter
            pending = atomicAdd(counter, 1);
        }
        if (!cur_early && cur >= 0) {
            load_tile(cur, 0);
            cp_async_commit();
        }
    } else if (cur >= 0) {
        load_tile(cur, 0);
        cp_async_commit();
    }

    // Q rows, pre-scaled into the log2 domain, as fp16 in shared memory (read while the first tile loads).
    const float q_scale = p.scale * kLog2e;
    for (int c = threadIdx.x; c < C::M * D / 4; c += NTH) {
        const int r    = c / (D / 4);
        const int d    = (c % (D / 4)) * 4;
        const int orow = s_orow[r];
        float4 x       = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (orow >= 0) {
            x = *reinterpret_cast<const float4 *>(p.q + int64_t(orow) * D + d);
        }
        __half2 * dst = reinterpret_cast<__half2 *>(s_q + r * C::LD + d);
        dst[0]        = __floats2half2_rn(x.x * q_scale, x.y * q_scale);
        dst[1]        = __floats2half2_rn(x.z * q_scale, x.w * q_scale);
    }

    // Running softmax states: prefill's rows layout here (MT m-tiles of 16 rows per warp), decode's in
    // keys_tile (attention_decode.cuh). Each shape leaves the other's unused.
    constexpr int MT = 2;
    const int qrow0  = 32 * warp;
    const int g      = lane / 4;
    const int t4     = lane % 4;
    float m[MT][2];
    float l[MT][2];
    float o[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
        }
    }
    typename C::decode_state st;
    st.init();

    if constexpr (PAIRS) {
        // Warps 0-3 take cur (buffer 0), warps 4-7 nxt (buffer 1), a quarter of the keys each. The host picks
        // this shape only where no split has more than two tiles.
        if (nxt >= 0 && !nxt_issued) {
            load_tile(nxt, 1);
            cp_async_commit();
        }
        cp_async_wait<0>();
        __syncthreads();
        st.load_q(s_q, lane);
        const int half = warp / 4;
        const int tile = half ? nxt : cur;
        if (tile >= 0) {
            const __half * s_k   = s_kv + (2 * half) * C::tile;
            const int t0         = tile * kTileN;
            const bool all_valid = (t0 >= s_ext[6] && t0 + kTileN <= s_ext[7]) || t0 + kTileN <= s_ext[5];
            const tile_keys tk{s_key + half * kTileN, s_rlo, s_rhi, t0, n_ex, all_valid};
            st.step(s_k, s_k + C::tile, tk, C::decode_state::NK * (warp % 4), lane);
        }
        __syncthreads();  // the epilogue reuses the K/V buffers
    }
    for (int step = 0; !PAIRS; ++step) {  // one tile at a time (the pairs above took every tile)
        const int tile = SPLIT_KEYS ? cur : tb + step;
        if (SPLIT_KEYS ? tile < 0 : tile >= te) {
            break;
        }
        const int buf = step & 1;
        if (!SPLIT_KEYS) {
            nxt = tile + 1 < te ? tile + 1 : -1;
        }
        if (counter && threadIdx.x == 0) {  // publish the tile fetched last step; fetch the one after
            const int t       = kPre * n_split + pending;
            s_sched[step & 1] = t < n_tiles ? t : -1;
            pending           = t < n_tiles ? atomicAdd(counter, 1) : pending;
        }
        if (nxt >= 0) {
            if (!(SPLIT_KEYS && step == 0 && nxt_issued)) {
                load_tile(nxt, buf ^ 1);
                cp_async_commit();
            }
            if (SPLIT_KEYS && nn >= 0) {
                prefetch_tile(nn);
            }
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __half * s_k   = s_kv + (2 * buf) * C::tile;
        const __half * s_v   = s_k + C::tile;
        const int32_t * keys = s_key + buf * kTileN;

        // Mask unless every key of the tile is visible to every row: dense keys inside every row's range,
        // or extras all below every row's lo.
        const int t0         = tile * kTileN;
        const bool all_valid = (t0 >= s_ext[6] && t0 + kTileN <= s_ext[7]) || t0 + kTileN <= s_ext[5];
        const tile_keys tk{keys, s_rlo, s_rhi, t0, n_ex, all_valid};
        if constexpr (SPLIT_KEYS) {
            if (step == 0) {
                st.load_q(s_q, lane);
            }
            st.step(s_k, s_v, tk, C::decode_state::NK * warp, lane);
        } else {
            // S = Q K^T for this warp's 32 rows and the tile's keys; each K fragment serves MT m-tiles.
            float s[MT][kTileN / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int j = 0; j < kTileN / 8; ++j) {
                    s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
                }
            }
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    ldmatrix_x4(qa[mt], s_q + (qrow0 + 16 * mt + (lane % 8) + 8 * ((lane / 8) % 2)) * C::LD +
                                            16 * kk + 8 * (lane / 16));
                }
#pragma unroll
                for (int np = 0; np < kTileN / 16; ++np) {
                    uint32_t b[4];
                    ldmatrix_x4(b, s_k + (16 * np + (lane % 8) + 8 * (lane / 16)) * C::LD + 16 * kk +
                                       8 * ((lane / 8) % 2));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_f16_f32(s[mt][2 * np], qa[mt], b[0], b[1]);
                        mma_f16_f32(s[mt][2 * np + 1], qa[mt], b[2], b[3]);
                    }
                }
            }

            if (!tk.all_valid) {
#pragma unroll
                for (int j = 0; j < kTileN / 8; ++j) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int col  = 8 * j + 2 * t4 + (e & 1);
                        const int key  = keys[col];
                        const int r    = e >> 1;
                        const bool ext = t0 + col < n_ex;
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            // The row's key range (padding rows see nothing), from shared memory: registers
                            // are all taken in prefill, and only tiles on a range edge come here.
                            const int row  = qrow0 + 16 * mt + g + 8 * r;
                            const int rl   = s_rlo[row];
                            const int rh   = s_rhi[row];
                            const bool vis = key >= 0 && (ext ? key < rl : (key >= rl && key < rh));
                            if (!vis) {
                                s[mt][j][e] = -INFINITY;
                            }
                        }
                    }
                }
            }

            // Online softmax: rescale the running state to the new row maxima.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float mx = m[mt][r];
#pragma unroll
                    for (int j = 0; j < kTileN / 8; ++j) {
                        mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
                    }
                    mx                = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
                    mx                = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
                    const float base  = mx == -INFINITY ? 0.0f : mx;  // a row with no key yet stays at zero
                    const float alpha = fast_exp2(m[mt][r] - base);
                    m[mt][r]          = mx;
                    float sum         = 0.0f;
#pragma unroll
                    for (int j = 0; j < kTileN / 8; ++j) {
                        s[mt][j][2 * r]     = fast_exp2(s[mt][j][2 * r] - base);
                        s[mt][j][2 * r + 1] = fast_exp2(s[mt][j][2 * r + 1] - base);
                        sum += s[mt][j][2 * r] + s[mt][j][2 * r + 1];
                    }
                    l[mt][r] = l[mt][r] * alpha + sum;
#pragma unroll
                    for (int j = 0; j < D / 8; ++j) {
                        o[mt][j][2 * r] *= alpha;
                        o[mt][j][2 * r + 1] *= alpha;
                    }
                }
            }

            // O += P V: the S accumulators of two adjacent key groups form one A fragment.
#pragma unroll
            for (int kc = 0; kc < kTileN / 16; ++kc) {
                uint32_t a[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    a[mt][0] = pack_half2(s[mt][2 * kc][0], s[mt][2 * kc][1]);
                    a[mt][1] = pack_half2(s[mt][2 * kc][2], s[mt][2 * kc][3]);
                    a[mt][2] = pack_half2(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
                    a[mt][3] = pack_half2(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, s_v + (16 * kc + (lane % 8) + 8 * ((lane / 8) % 2)) * C::LD +
                                             16 * dp + 8 * (lane / 16));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_f16_f32(o[mt][2 * dp], a[mt], b[0], b[1]);
                        mma_f16_f32(o[mt][2 * dp + 1], a[mt], b[2], b[3]);
                    }
                }
            }
        }
        __syncthreads();  // the next iteration's load overwrites this buffer
        if (SPLIT_KEYS) {
            cur = nxt;
            nxt = nn;
            nn  = counter ? s_sched[step & 1] : own(step + 3);
        }
    }

    const attn_sink sink{p.out, p.work, p.n_q * p.n_head, s_orow, D, split, n_split};
    if constexpr (!SPLIT_KEYS) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                l[mt][r] += __shfl_xor_sync(0xffffffff, l[mt][r], 1);
                l[mt][r] += __shfl_xor_sync(0xffffffff, l[mt][r], 2);
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = qrow0 + 16 * mt + g + 8 * r;
#pragma unroll
                for (int j = 0; j < D / 8; ++j) {
                    const float pair[2] = {o[mt][j][2 * r], o[mt][j][2 * r + 1]};
                    sink.emit<2>(row, 8 * j + 2 * t4, pair, l[mt][r], m[mt][r]);
                }
            }
        }
    } else {
        st.finish();
        // Decode shape: merge the four warps' states over their disjoint keys, four dims per thread and only
        // for the rows that exist (a GQA group of 4 fills 4 of the 8; the padding rows cost microseconds).
        // The loop's last barrier freed the K/V buffers this reuses.
        const int n_valid = int(min(int64_t(M), n_rows - row0));
        float * s_o       = reinterpret_cast<float *>(smem);  // [W][M][LDO]
        float * s_ml      = s_o + W * M * C::LDO;             // [W][M] max, then [W][M] sum
        st.store(s_o + warp * M * C::LDO, C::LDO, s_ml + warp * M, s_ml + (W + warp) * M, n_valid, lane);
        __syncthreads();
        for (int c = threadIdx.x; c < n_valid * (D / 4); c += NTH) {
            const int row = c / (D / 4);
            const int d   = (c % (D / 4)) * 4;
            float mx      = -INFINITY;
#pragma unroll
            for (int w = 0; w < W; ++w) {
                mx = fmaxf(mx, s_ml[w * M + row]);
            }
            const float base = mx == -INFINITY ? 0.0f : mx;
            float ls         = 0.0f;
            float os[4]      = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int w = 0; w < W; ++w) {
                const float f  = fast_exp2(s_ml[w * M + row] - base);
                const float4 v = *reinterpret_cast<const float4 *>(s_o + (w * M + row) * C::LDO + d);
                ls += s_ml[(W + w) * M + row] * f;
                os[0] += v.x * f;
                os[1] += v.y * f;
                os[2] += v.z * f;
                os[3] += v.w * f;
            }
            sink.emit<4>(row, d, os, ls, mx);
        }
    }
}

// out[row] = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max lse); one CTA of kMergeThreads per output
// row. A group of head_dim / 4 threads (one float4 of the row each) walks every n_phase-th split with its
// own running maximum, so that the splits of a decode step (~50) are read in a few round trips and the
// phases meet once, in shared memory. CTA 0 also rezeroes the tile counters of the dynamic schedule.
constexpr int kMergeThreads = 256;
// Splits a merge thread loads before it uses any: a loop that skipped empty splits as it went took 2 us to
// read the four splits of a 32-split decode step, against 1 us loaded at once (H100).
constexpr int kMergeBatch = 4;

// Splits the merge kernel reads in one round of loads.
int merge_one_pass(int head_dim) {
    return kMergeThreads / (head_dim / 4) * kMergeBatch;
}

__global__ void __launch_bounds__(kMergeThreads)
    attn_merge_kernel(const float * work, float * out, int64_t n_out, int head_dim, int n_split,
                      int * tile_next, int n_counters) {
    pdl_trigger();
    pdl_wait();
    __shared__ float4 s_num[kMergeThreads];
    __shared__ float s_max[kMergeThreads];
    __shared__ float s_den[kMergeThreads];
    if (blockIdx.x == 0 && tile_next) {
        for (int i = threadIdx.x; i < n_counters; i += kMergeThreads) {
            tile_next[i] = 0;
        }
    }
    const int64_t row   = blockIdx.x;
    const float * lse   = work + int64_t(n_split) * n_out * head_dim;
    const int per_phase = head_dim / 4;  // 16 or 32 threads
    const int n_phase   = kMergeThreads / per_phase;
    const int phase     = threadIdx.x / per_phase;
    const int d4        = threadIdx.x % per_phase;
    float mx            = -INFINITY;
    float den           = 0.0f;
    float4 num          = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s0 = phase; s0 < n_split; s0 += kMergeBatch * n_phase) {
        float ls[kMergeBatch];
        float4 o[kMergeBatch];
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
            const int s = s0 + k * n_phase;
            ls[k]       = s < n_split ? lse[s * n_out + row] : -INFINITY;
            o[k] = s < n_split ? reinterpret_cast<const float4 *>(work + (s * n_out + row) * head_dim)[d4]
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
            if (ls[k] == -INFINITY) {
                continue;  // a split without keys for this row, or past the last split
            }
            const float nmx = fmaxf(mx, ls[k]);
            const float a   = fast_exp2(mx - nmx);  // 0 while mx is still -inf
            const float w   = fast_exp2(ls[k] - nmx);
            mx              = nmx;
            den             = den * a + w;
            num = make_float4(num.x * a + w * o[k].x, num.y * a + w * o[k].y, num.z * a + w * o[k].z,
                              num.w * a + w * o[k].w);
        }
    }
    s_num[threadIdx.x] = num;
    s_max[threadIdx.x] = mx;
    s_den[threadIdx.x] = den;
    __syncthreads();
    if (phase == 0) {
        float m_all = -INFINITY;
        for (int ph = 0; ph < n_phase; ++ph) {
            m_all = fmaxf(m_all, s_max[ph * per_phase + d4]);
        }
        float den_all  = 0.0f;
        float4 num_all = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (m_all != -INFINITY) {
            for (int ph = 0; ph < n_phase; ++ph) {
                const int t   = ph * per_phase + d4;
                const float a = fast_exp2(s_max[t] - m_all);
                den_all += s_den[t] * a;
                num_all.x += s_num[t].x * a;
                num_all.y += s_num[t].y * a;
                num_all.z += s_num[t].z * a;
                num_all.w += s_num[t].w * a;
            }
        }
        const float inv = den_all > 0.0f ? 1.0f / den_all : 0.0f;
        reinterpret_cast<float4 *>(out + row * head_dim)[d4] =
            make_float4(num_all.x * inv, num_all.y * inv, num_all.z * inv, num_all.w * inv);
    }
}

template <int D, int M, int W>
void attn_launch(const attn_cuda_params & p, int n_split, cudaStream_t stream) {
    using C              = attn_cfg<D, M, W>;
    const int64_t n_rows = p.n_q * (p.n_head / p.n_head_kv);
    const dim3 grid(unsigned(ceil_div(n_rows, M)), unsigned(p.n_head_kv), unsigned(n_split));
    static const bool smem_set = [] {  // once per instance: the call costs host time on every launch
        CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<D, M, W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(C::smem)));
        return true;
    }();
    (void)smem_set;
    launch_pdl(attn_kernel<D, M, W>, grid, 32 * W, C::smem, stream, p, n_split);
    CUDA_CHECK_LAUNCH("attn_kernel");
}

// CTAs of one instance that fit on a multiprocessor at once (shared memory is the limit).
template <int D, int M>
int attn_ctas_per_sm() {
    static const int n = [] {
        using C  = attn_cfg<D, M>;
        int dev  = 0;
        int smem = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
        return std::max(1, int(size_t(smem) / (C::smem + 1024)));  // 1 KiB reserved per CTA
    }();
    return n;
}

// Rows per CTA: decode (splitting the keys) with one or two n-tiles of 8 rows, or the prefill shape.
int attn_rows(const attn_cuda_params & p) {
    const int64_t n = p.n_q * (p.n_head / p.n_head_kv);
    return n <= 8 ? 8 : (n <= 16 ? 16 : kPrefillRows);
}

// f(head_dim, rows) with both as std::integral_constant: the kernel instance for these parameters.
template <class F>
auto attn_instance(const attn_cuda_params & p, F && f) {
    using std::integral_constant;
    const int rows = attn_rows(p);
    auto with_rows = [&](auto d) {
        return rows == 8    ? f(d, integral_constant<int, 8>())
               : rows == 16 ? f(d, integral_constant<int, 16>())
                            : f(d, integral_constant<int, kPrefillRows>());
    };
    return p.head_dim == 64 ? with_rows(integral_constant<int, 64>())
                            : with_rows(integral_constant<int, 128>());
}

void attn_check(const attn_cuda_params & p) {
    if (p.head_dim != 64 && p.head_dim != 128) {
        fail("attention_cuda: head_dim %d is not supported (64 or 128)", p.head_dim);
    }
    if (p.n_head_kv <= 0 || p.n_head <= 0 || p.n_head % p.n_head_kv != 0) {
        fail("attention_cuda: n_head %d is not a multiple of n_head_kv %d", p.n_head, p.n_head_kv);
    }
    if (p.n_q < 0 || p.n_keys_max < 0 || p.n_split < 0) {
        fail("attention_cuda: negative n_q, n_keys_max or n_split");
    }
    if (p.n_head_kv > 65535) {
        fail("attention_cuda: n_head_kv %d exceeds the grid limit", p.n_head_kv);
    }
}

}  // namespace

int attention_cuda_n_split(const attn_cuda_params & p) {
    attn_check(p);
    if (p.n_split > 0) {
        return std::min(p.n_split, 65535);
    }
    // Decode splits down to two tiles per CTA (both load before the kernel waits for its predecessor) and up
    // to four fifths of what fits on the device at its shared-memory occupancy: tiles come from a counter, so
    // a CTA that finishes early takes more, and fewer splits cost less to merge (a sweep of 8 to 49 splits x
    // 8 heads over 4K-128K keys on the H100 put the best at 32-40). Up to four tiles per split, a launch is a
    // chain of latencies rather than a K/V stream: no more splits than the merge reads in one pass (H100, 8
    // KV heads, head_dim 128: 8K 18.4 -> 16.6 us with 32 splits instead of 39; 39 stays 2-3% ahead from
    // 10K). Prefill CTAs have enough rows to stay busy and split down to 8 tiles, to two CTAs per
    // multiprocessor.
    const int m_rows     = attn_rows(p);
    const bool decode    = m_rows < kPrefillRows;
    const int64_t n_ctas = p.n_head_kv * ceil_div(p.n_q * (p.n_head / p.n_head_kv), int64_t(m_rows));
    const int per_sm =
        !decode ? 2 : attn_instance(p, [](auto d, auto m) { return attn_ctas_per_sm<d, m>(); });
    const int64_t slots   = int64_t(per_sm) * cuda_sm_count();
    const int64_t target  = decode ? slots * 4 / 5 : slots;
    const int64_t by_keys = std::max<int64_t>(1, p.n_keys_max / ((decode ? 2 : 8) * kTileN));
    // Rounded down: one CTA past what fits at once would run as a second wave of its own.
    int64_t n = std::min(target / std::max<int64_t>(1, n_ctas), by_keys);
    if (decode && by_keys <= 2 * merge_one_pass(p.head_dim)) {
        n = std::min<int64_t>(n, merge_one_pass(p.head_dim));
    }
    return int(std::clamp<int64_t>(n, 1, 128));
}

size_t attention_cuda_work_bytes(const attn_cuda_params & p) {
    const int n_split = attention_cuda_n_split(p);
    if (n_split == 1) {
        return 0;
    }
    return size_t(n_split) * size_t(p.n_q) * size_t(p.n_head) * size_t(p.head_dim + 1) * sizeof(float);
}

void attention_cuda(const attn_cuda_params & p, cudaStream_t stream) {
    const int n_split = attention_cuda_n_split(p);
    if (p.n_q == 0) {
        return;
    }
    if (n_split > 1 && p.work == nullptr) {
        fail("attention_cuda: %d key splits need a workspace of %zu bytes", n_split,
             attention_cuda_work_bytes(p));
    }
    const bool split_keys = attn_rows(p) < kPrefillRows;
    // With one query a CTA's key list has at most n_keys_max keys (its extras are distinct entries below its
    // dense range); the rows of several queries see the union of their ranges, which may hold more.
    const bool pairs = split_keys && p.n_q == 1 && p.n_keys_max <= int64_t(2) * kTileN * n_split;
    attn_instance(p, [&](auto d, auto m) {
        if constexpr (m < kPrefillRows) {
            if (pairs) {
                attn_launch<d, m, kPairWarps>(p, n_split, stream);
                return;
            }
        }
        attn_launch<d, m, kWarps>(p, n_split, stream);
    });
    if (n_split > 1) {
        const int64_t n_out = p.n_q * p.n_head;
        launch_pdl(attn_merge_kernel, unsigned(n_out), kMergeThreads, 0, stream,
                   static_cast<const float *>(p.work), p.out, n_out, p.head_dim, n_split,
                   split_keys ? p.tile_next : nullptr, p.n_head_kv);
        CUDA_CHECK_LAUNCH("attn_merge_kernel");
    }
}

}  // namespace tca
