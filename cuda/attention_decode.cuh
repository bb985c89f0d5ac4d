// The decode tile math of the attention core (attention.cu): one K/V tile of kTileN keys against a CTA's
// 8 or 16 query rows, with mma.sync (fp16 operands, fp32 accumulation) and the online softmax in the log2
// domain (Q comes pre-scaled by scale * log2 e). The keys are the MMA's M dimension and the rows its N
// dimension, S^T = K Q^T and O^T += V^T P^T, where prefill's layout (rows as M, in attention.cu) would pad
// a GQA group of 4 to a 16-row m-tile: an n-tile of 8 rows halves the MMAs, and Q's fragments stay in
// registers for the whole launch. Each of the kWarps warps takes 16 keys of a tile; movmatrix transposes
// S^T's accumulators into P^T's operand fragments. The warps' states are merged at the end (attention.cu).
#pragma once

#include <cstdint>

#include "mma.cuh"

namespace tca {

constexpr int kWarps = 4;
constexpr int kTileN = 64;  // keys per tile

// A tile's keys in shared memory and who may see them: the CPU core's rule.
struct tile_keys {
    const int32_t * key;  // [kTileN] cache entry of each column, -1 past the end of the list
    const int32_t * rlo;  // [rows] key range of each local row (padding rows: empty)
    const int32_t * rhi;
    int t0;          // list position of column 0
    int n_ex;        // list positions below n_ex are extras, visible below a row's lo
    bool all_valid;  // every key is visible to every row: no mask

    __device__ __forceinline__ bool visible(int col, int row) const {
        const int k = key[col];
        const int l = rlo[row];
        return k >= 0 && (t0 + col < n_ex ? k < l : (k >= l && k < rhi[row]));
    }
};

// Rescales a running state to a new row maximum mx (log2 domain) and returns the factor; a row that has
// seen no key yet keeps a zero base so that exp2(-inf - base) stays 0.
__device__ __forceinline__ float softmax_rebase(float & m, float mx, float & base) {
    base          = mx == -INFINITY ? 0.0f : mx;
    const float a = fast_exp2(m - base);
    m             = mx;
    return a;
}

template <int D, int NT>
struct keys_tile {
    static constexpr int LD = D + 8;
    static constexpr int NK = kTileN / kWarps;  // keys of a tile per warp: one m-tile (of four warps)
    static_assert(NK == 16, "one 16-key m-tile per warp");
    uint32_t qb[NT][D / 16][2];  // Q^T's B fragments: (dims 16 kk + 2t, +1 (+8), row 8 nt + g)
    float m[NT][2];              // rows 8 nt + 2t + r
    float l[NT][2];              // this thread's share of the row's sum (its keys g and g + 8)
    float o[NT][D / 16][4];      // O^T: (dim 16 mt + g (+8), rows 8 nt + 2t, +1)

    __device__ __forceinline__ void init() {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            m[nt][0] = m[nt][1] = -INFINITY;
            l[nt][0] = l[nt][1] = 0.0f;
#pragma unroll
            for (int mt = 0; mt < D / 16; ++mt) {
                o[nt][mt][0] = o[nt][mt][1] = o[nt][mt][2] = o[nt][mt][3] = 0.0f;
            }
        }
    }

    // s_q: the CTA's 8 NT rows [.][LD] (after a barrier that follows their store).
    __device__ __forceinline__ void load_q(const __half * s_q, int lane) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int kk = 0; kk < D / 16; kk += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, s_q + (8 * nt + lane % 8) * LD + 16 * kk + 8 * (lane / 8));
                qb[nt][kk][0]     = r[0];
                qb[nt][kk][1]     = r[1];
                qb[nt][kk + 1][0] = r[2];
                qb[nt][kk + 1][1] = r[3];
            }
        }
    }

    // This warp's 16 keys of the tile, from kofs.
    __device__ __forceinline__ void step(const __half * s_k, const __half * s_v, const tile_keys & tk,
                                         int kofs, int lane) {
        const int g  = lane / 4;
        const int t4 = lane % 4;
        // S^T in two accumulator chains (even and odd dim blocks), summed: half the dependent MMAs in a row.
        float s[NT][4];
        float s2[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            s2[nt][0] = s2[nt][1] = s2[nt][2] = s2[nt][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(a, s_k + (kofs + (lane % 8) + 8 * ((lane / 8) % 2)) * LD + 16 * kk + 8 * (lane / 16));
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mma_f16_f32(kk % 2 ? s2[nt] : s[nt], a, qb[nt][kk][0], qb[nt][kk][1]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] += s2[nt][e];
                if (!tk.all_valid && !tk.visible(kofs + g + 8 * (e >> 1), 8 * nt + 2 * t4 + (e & 1))) {
                    s[nt][e] = -INFINITY;
                }
            }
        }
        // Softmax over the keys: a row's 16 keys sit in the 8 lanes of one t4, two per lane.
        uint32_t pb[NT][2];  // P^T's B fragments: (keys 2t, +1 (+8), row 8 nt + g)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = fmaxf(m[nt][r], fmaxf(s[nt][r], s[nt][r + 2]));
                mx       = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 4));
                mx       = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 8));
                mx       = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 16));
                float base;
                const float alpha = softmax_rebase(m[nt][r], mx, base);
                s[nt][r]          = fast_exp2(s[nt][r] - base);
                s[nt][r + 2]      = fast_exp2(s[nt][r + 2] - base);
                l[nt][r]          = l[nt][r] * alpha + s[nt][r] + s[nt][r + 2];
#pragma unroll
                for (int mt = 0; mt < D / 16; ++mt) {
                    o[nt][mt][r] *= alpha;
                    o[nt][mt][r + 2] *= alpha;
                }
            }
            pb[nt][0] = movmatrix_trans(pack_half2(s[nt][0], s[nt][1]));
            pb[nt][1] = movmatrix_trans(pack_half2(s[nt][2], s[nt][3]));
        }
        // O^T += V^T P^T: V^T's A fragments are V's rows read transposed.
#pragma unroll
        for (int mt = 0; mt < D / 16; ++mt) {
            uint32_t a[4];
            ldmatrix_x4_trans(
                a, s_v + (kofs + (lane % 8) + 8 * (lane / 16)) * LD + 16 * mt + 8 * ((lane / 8) % 2));
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                mma_f16_f32(o[nt][mt], a, pb[nt][0], pb[nt][1]);
            }
        }
    }

    // The sums of p over this warp's keys of each row (its 8 lanes of one t4).
    __device__ __forceinline__ void finish() {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                l[nt][r] += __shfl_xor_sync(0xffffffff, l[nt][r], 4);
                l[nt][r] += __shfl_xor_sync(0xffffffff, l[nt][r], 8);
                l[nt][r] += __shfl_xor_sync(0xffffffff, l[nt][r], 16);
            }
        }
    }

    // Writes this warp's state for the rows below n_valid: s_o [.][ldo] at row, s_m and s_l [row].
    __device__ __forceinline__ void store(float * s_o, int ldo, float * s_m, float * s_l, int n_valid,
                                          int lane) const {
        const int g  = lane / 4;
        const int t4 = lane % 4;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = 8 * nt + 2 * t4 + r;
                if (row >= n_valid) {
                    continue;
                }
                if (g == 0) {
                    s_m[row] = m[nt][r];
                    s_l[row] = l[nt][r];
                }
#pragma unroll
                for (int mt = 0; mt < D / 16; ++mt) {
                    s_o[row * ldo + 16 * mt + g]     = o[nt][mt][r];
                    s_o[row * ldo + 16 * mt + g + 8] = o[nt][mt][r + 2];
                }
            }
        }
    }
};

}  // namespace tca
