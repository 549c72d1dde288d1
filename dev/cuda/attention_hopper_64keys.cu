// Variant of attention_hopper.cu's backward, measured and not kept (dev/cuda/README.md): one warpgroup
// per 64 keys, three blocks per SM, each block copying its own query tiles and adding its own dq, where
// the mainline's warp-specialized kernel gives 128 keys two warpgroups and a third that copies the tiles
// and adds dq for both. Same arguments and companions.
#include "attention_hopper.cu"

#if LLMNP_BF16 && HS == 64 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// start copying ROWS rows of one head (HS = 64 bf16 = 128 bytes each) into a swizzled shared tile, by
// THREADS threads (this one is number tid of them; rows at or past T: zeros), each thread its own
// cp.async copies (the mainline kernels have the copy engine copy by tensor maps). Both are constants,
// so each thread's rows and chunk, and the swizzle, are worked out once and the copies unrolled.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_sw(floatX* tile, const floatX* src, int row0, int T, int stride, int tid) {
    static_assert(THREADS % 8 == 0 && ROWS * 8 % THREADS == 0, "whole rows per pass");
    const int r = tid / 8, c = tid % 8;                             // first row, 16-byte chunk
    char* dst = reinterpret_cast<char*>(tile) + swizzled(r, c);            // r % 8 is the same every pass
    for (int k = 0; k < ROWS * 8 / THREADS; k++) {
        const int row = row0 + r + k * (THREADS / 8);
        const bool ok = row < T;
        cp_async16(dst + k * (THREADS / 8) * 128, src + (long long)(ok ? row : 0) * stride + c * 8, ok);
    }
}

// The backward on warpgroup instructions, in attention_backward_mma's order and with its arguments, grid
// and companions (attention_backward_rowdot first, attention_backward_dq_store after): one warpgroup
// (128 threads) per 64-key tile, walking the query tiles from the diagonal to the end. Per query tile:
//   S^T = K Q^T and dP^T = V dO^T    (wgmma, both operands in shared memory, K-major)
//   P^T, dS^T in registers           (the mma kernel's element-wise step; only the diagonal and last
//                                     tiles are masked)
//   dV += P^T dO, dK += dS^T Q       (wgmma, A from registers, B = dO, Q in shared memory, N-major)
//   dQ = dS K                        (wgmma, A = dS^T in shared memory read transposed, B = K N-major)
// and dq is added into dq_acc through shared memory in 16-byte packs. Shared (dynamic, 1024-byte
// aligned, 128-byte swizzle): K, V, Q | dO double-buffered, dS^T (64 x 64 bf16 each, 8 KB), then the lse
// and D of two query tiles.
extern "C" __global__ void __launch_bounds__(128, 3)
attention_backward_wgmma_64keys(floatX* dqkv, float* dq_acc, const floatX* dout, const floatX* qkv, const float* lse,
                         const float* D, int B, int T, int NH) {
    floatX* ks = smem_aligned_1024();
    floatX* vs = ks + TILE * HS;
    floatX* tiles = vs + TILE * HS;                               // 4 tiles: [2 cur]: Q, [2 cur + 1]: dO
    floatX* dst = tiles + 4 * TILE * HS;                          // dS^T [key][query]
    float* ls = reinterpret_cast<float*>(dst + TILE * TILE);      // [2][TILE]
    float* Ds = ls + 2 * TILE;                                    // [2][TILE]
    const int C = NH * HS, C3 = 3 * C;
    const int kt = blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    const float* lse_bh = lse + (long long)bh * T;
    const float* D_bh = D + (long long)bh * T;
    load_tile_sw<TILE, 128>(ks, q + C, kt * TILE, T, C3, threadIdx.x);
    load_tile_sw<TILE, 128>(vs, q + 2 * C, kt * TILE, T, C3, threadIdx.x);
    load_tile_sw<TILE, 128>(tiles, q, kt * TILE, T, C3, threadIdx.x);                // the first query tile (the diagonal)
    load_tile_sw<TILE, 128>(tiles + TILE * HS, dO, kt * TILE, T, C, threadIdx.x);
    load_stat(ls, lse_bh, kt * TILE, T);
    load_stat(Ds, D_bh, kt * TILE, T);
    cp_async_commit();
    const int jl0 = warp * 16 + g, jl1 = jl0 + 8;                // this thread's two keys, in the tile
    const int j0 = kt * TILE + jl0, j1 = kt * TILE + jl1;
    const float sl2 = LOG2E / sqrtf((float)HS);
    char* dsc = reinterpret_cast<char*>(dst);
    float dk[HS / 8][4], dv[HS / 8][4];
    for (int n = 0; n < HS / 8; n++)
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    const int ntiles = (T + TILE - 1) / TILE;
    // descriptors of the tiles' starts; a k-step adds its byte offset / 16 (the address field's unit)
    const unsigned long long kd = smem_desc(ks, 16, 1024), vd = smem_desc(vs, 16, 1024), dsd = smem_desc(dst, 16, 1024);
    const unsigned long long td = smem_desc(tiles, 16, 1024);
    for (int qt = kt; qt < ntiles; qt++) {
        const int cur = (qt - kt) & 1;
        const unsigned long long qd = td + 2 * cur * (TILE * HS * 2 / 16), dod = qd + TILE * HS * 2 / 16;
        cp_async_wait<0>();
        fence_async_shared();                                     // this thread's copies, visible to wgmma
        __syncthreads();                                          // tile qt is in; tile qt-1's buffers are free
        if (qt + 1 < ntiles) {
            load_tile_sw<TILE, 128>(tiles + 2 * (cur ^ 1) * TILE * HS, q, (qt + 1) * TILE, T, C3, threadIdx.x);
            load_tile_sw<TILE, 128>(tiles + (2 * (cur ^ 1) + 1) * TILE * HS, dO, (qt + 1) * TILE, T, C, threadIdx.x);
            load_stat(ls + (cur ^ 1) * TILE, lse_bh, (qt + 1) * TILE, T);
            load_stat(Ds + (cur ^ 1) * TILE, D_bh, (qt + 1) * TILE, T);
            cp_async_commit();
        }
        float st[TILE / 8][4], dpt[TILE / 8][4];                  // S^T and dP^T: rows keys, columns queries
        wg_fence();
        for (int kk = 0; kk < HS / 16; kk++)
            wgmma_ss(st, kd + kk * 2, qd + kk * 2, kk > 0);
        for (int kk = 0; kk < HS / 16; kk++)
            wgmma_ss(dpt, vd + kk * 2, dod + kk * 2, kk > 0);
        wg_commit();
        wg_wait<0>();
        if (qt == kt || (qt + 1) * TILE > T)                      // the diagonal and last tiles: mask
            for (int n = 0; n < TILE / 8; n++)
                for (int e = 0; e < 4; e++) {
                    const int i = qt * TILE + n * 8 + 2 * tig + (e & 1), j = e < 2 ? j0 : j1;
                    if (!(i >= j && i < T && j < T)) st[n][e] = -INFINITY;    // p = exp2(-inf) = 0, dS = 0
                }
        for (int n = 0; n < TILE / 8; n++) {                      // this thread's queries n*8 + 2 tig (+ 1)
            const float2 l2 = *reinterpret_cast<const float2*>(ls + cur * TILE + n * 8 + 2 * tig);
            const float2 d2 = *reinterpret_cast<const float2*>(Ds + cur * TILE + n * 8 + 2 * tig);
            const float lse2[2] = {l2.x * LOG2E, l2.y * LOG2E}, Dq[2] = {d2.x, d2.y};
            for (int e = 0; e < 4; e++) {
                const float p = exp2_ftz(fmaf(st[n][e], sl2, -lse2[e & 1]));
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - Dq[e & 1]);
            }
        }
        unsigned pa[TILE / 16][4], da[TILE / 16][4];
        for (int kk = 0; kk < TILE / 16; kk++) {
            acc_to_a(pa[kk], st[2 * kk], st[2 * kk + 1]);
            acc_to_a(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
        }
        for (int n = 0; n < TILE / 8; n++) {                      // dS^T to shared memory, swizzled like the tiles
            *reinterpret_cast<unsigned*>(dsc + swizzled(jl0, n) + 4 * tig) = da[n / 2][n % 2 * 2];
            *reinterpret_cast<unsigned*>(dsc + swizzled(jl1, n) + 4 * tig) = da[n / 2][n % 2 * 2 + 1];
        }
        wg_fence();
        for (int kk = 0; kk < TILE / 16; kk++) {
            wgmma_rs(dv, pa[kk], dod + kk * 128);
            wgmma_rs(dk, da[kk], qd + kk * 128);
        }
        wg_commit();
        fence_async_shared();                                     // dS^T, visible to wgmma
        __syncthreads();
        float dq[HS / 8][4];                                      // rows: queries warp*16 + g (+ 8)
        wg_fence();
        for (int kk = 0; kk < TILE / 16; kk++)
            wgmma_ss_t(dq, dsd + kk * 128, kd + kk * 128, kk > 0);
        wg_commit();
        wg_wait<0>();                                             // dV, dK and dQ done: Q and dO are free
        // dq through shared memory (over this tile's Q and dO; 8-float chunks swizzled by row) into dq_acc
        float* dqs = reinterpret_cast<float*>(tiles + 2 * cur * TILE * HS);   // [TILE][HS] float
        for (int n = 0; n < HS / 8; n++) {
            const int r0 = warp * 16 + g, r1 = r0 + 8;
            *reinterpret_cast<float2*>(dqs + r0 * HS + ((n ^ (r0 % 8)) * 8) + 2 * tig) = make_float2(dq[n][0], dq[n][1]);
            *reinterpret_cast<float2*>(dqs + r1 * HS + ((n ^ (r1 % 8)) * 8) + 2 * tig) = make_float2(dq[n][2], dq[n][3]);
        }
        __syncthreads();
#pragma unroll 1
        for (int x = threadIdx.x; x < TILE * HS / 4; x += 128) {             // 128 threads
            const int r = x / (HS / 4), c = x % (HS / 4) * 4, i = qt * TILE + r;
            if (i < T) atomic_add4(dq_acc + ((long long)b * T + i) * C + h * HS + c,
                                   *reinterpret_cast<const float4*>(dqs + r * HS + (((c / 8) ^ (r % 8)) * 8) + c % 8));
        }
    }
    store_dkdv(dqkv, nullptr, dk, dv, b, h, NH, j0, T);
}
#endif
