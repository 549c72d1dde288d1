// Causal self-attention on Hopper's warpgroup instructions (sm_90a: wgmma reading shared memory
// directly), head size 64 (every GPT-2 size): the forward and the fused backward of attention.cu's
// tensor-core kernels, which stay the portable path (pre-Hopper GPUs, other head sizes) and the
// reference these are tested against. Same arguments, grids' meaning, outputs and companions
// (attention_backward_rowdot before the backward, attention_backward_dq_store after it); the online
// softmax, its output and the backward's element-wise step are attention.cu's, whose mma.sync
// accumulator layout wgmma's m64nN shares (warp w of a warpgroup holds its rows 16w..16w+15).
// Compiled with -arch=sm_90a (runtime.py ARCH); empty for any other target.
//
// Shared tiles: one token per 128-byte row (HS = 64 bf16), 8-row atoms of 1024 bytes in wgmma's 128-byte
// swizzle: the 16-byte chunk c of row r is stored at chunk c ^ (r % 8), so the copies into shared memory
// and the tensor cores' reads are free of bank conflicts. An operand whose contraction dimension is the
// head (Q, K in q k^T; K, V in k q^T and v dO^T) is K-major: a k-step of 16 moves the start address 32
// bytes, the next 8 rows are 1024 bytes on (stride byte offset). One contracted over tokens (V in P V,
// dO and Q in dV and dK, K and dS^T in dQ) is MN-major in the same storage: a k-step of 16 tokens moves
// 2048 bytes, and the instruction transposes it.
#include "attention.cu"

#if LLMNP_BF16 && HS == 64 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ROWS 128                            // query rows per block: two warpgroups of 64

// start copying ROWS rows of one head (HS = 64 bf16 = 128 bytes each) into a swizzled shared tile, by a
// block of THREADS threads (rows at or past T: zeros). Both are constants, so each thread's rows and
// chunk, and the swizzle, are worked out once and the copies unrolled.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_sw(floatX* tile, const floatX* src, int row0, int T, int stride) {
    static_assert(THREADS % 8 == 0 && ROWS * 8 % THREADS == 0, "whole rows per pass");
    const int r = threadIdx.x / 8, c = threadIdx.x % 8;             // first row, 16-byte chunk
    char* dst = reinterpret_cast<char*>(tile) + r * 128 + ((c ^ (r % 8)) * 16);   // r % 8 is the same every pass
    for (int k = 0; k < ROWS * 8 / THREADS; k++) {
        const int row = row0 + r + k * (THREADS / 8);
        const bool ok = row < T;
        cp_async16(dst + k * (THREADS / 8) * 128, src + (long long)(ok ? row : 0) * stride + c * 8, ok);
    }
}

// a shared-memory matrix descriptor: start address, leading and stride byte offsets, 128-byte swizzle
__device__ __forceinline__ unsigned long long smem_desc(const void* p, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((smem_u32(p) & 0x3FFFF) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3FFF) << 32) | (1ull << 62);
}

#define WG_ACC32(d) \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), \
    "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), \
    "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
    "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
    "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define WG_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d (64 x 64, fp32) = (accumulate ? d : 0) + A (64 x 16, shared, K-major) B (16 x 64, shared, K-major)
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], unsigned long long a, unsigned long long b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_ACC32(d) : "l"(a), "l"(b), "r"(accumulate));
}

// d (64 x 64, fp32) += A (64 x 16, registers: mma.sync's A fragment per warp) B (16 x 64, shared, N-major)
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const unsigned (&a)[4], unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : WG_ACC32(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// d (64 x 64, fp32) = (accumulate ? d : 0) + A (64 x 16, shared, M-major) B (16 x 64, shared, N-major)
__device__ __forceinline__ void wgmma_ss_t(float (&d)[8][4], unsigned long long a, unsigned long long b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_D32 ", %32, %33, p, 1, 1, 1, 1;\n}\n"
                 : WG_ACC32(d) : "l"(a), "l"(b), "r"(accumulate));
}

// The forward: grid (ceil(T/128), B*NH), 256 threads, two warpgroups of 64 queries; the longest query
// tiles start first. Per 64-key tile each warpgroup computes S = Q K^T (wgmma, both in shared memory),
// the online softmax step in registers, then O += P V (wgmma, P from registers). Shared (dynamic, 48 KB
// and up to 1 KB to align it to 1024 bytes): Q (128 rows), then K and V double-buffered (64 rows each).
extern "C" __global__ void __launch_bounds__(256) attention_forward_wgmma(floatX* out, float* lse, const floatX* qkv,
                                                                            int B, int T, int NH) {
    floatX* qs = reinterpret_cast<floatX*>((reinterpret_cast<unsigned long long>(smem16) + 1023) & ~1023ull);
    floatX* ks = qs + WG_ROWS * HS;                               // 2 tiles
    floatX* vs = ks + 2 * TILE * HS;                              // 2 tiles
    const int C = NH * HS, C3 = 3 * C;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, g = threadIdx.x % 32 / 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    load_tile_sw<WG_ROWS, 256>(qs, q, qt * WG_ROWS, T, C3);
    load_tile_sw<TILE, 256>(ks, q + C, 0, T, C3);
    load_tile_sw<TILE, 256>(vs, q + 2 * C, 0, T, C3);
    cp_async_commit();
    const int row_base = qt * WG_ROWS + wg * 64;                  // this warpgroup's first query
    const int r0 = row_base + warp * 16 + g;                      // this thread's query rows: r0, r0 + 8
    const int my_last = row_base / TILE;                          // the diagonal key tile of this warpgroup
    const int last = min((qt * WG_ROWS + WG_ROWS - 1) / TILE, (T - 1) / TILE);   // the block's last key tile
    const char* qw = reinterpret_cast<const char*>(qs) + wg * 64 * 128;
    float o[HS / 8][4];
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};    // rows r0, r0 + 8: running max (base 2), sum
    for (int kt = 0; kt <= last; kt++) {
        const int cur = kt & 1;
        const char* kcur = reinterpret_cast<const char*>(ks + cur * TILE * HS);
        const char* vcur = reinterpret_cast<const char*>(vs + cur * TILE * HS);
        if (kt < last) {
            load_tile_sw<TILE, 256>(ks + (cur ^ 1) * TILE * HS, q + C, (kt + 1) * TILE, T, C3);
            load_tile_sw<TILE, 256>(vs + (cur ^ 1) * TILE * HS, q + 2 * C, (kt + 1) * TILE, T, C3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_async_shared();                                     // this thread's copies, visible to wgmma
        __syncthreads();
        if (kt <= my_last && row_base < T) {
            float s[TILE / 8][4] = {};                            // written by the first wgmma (no accumulate)
            wg_fence();
            for (int kk = 0; kk < HS / 16; kk++)
                wgmma_ss(s, smem_desc(qw + kk * 32, 16, 1024), smem_desc(kcur + kk * 32, 16, 1024), kk > 0);
            wg_commit();
            wg_wait0();
            softmax_tile(s, o, m, l, kt * TILE, r0, kt == my_last || (kt + 1) * TILE > T, T);
            unsigned pa[TILE / 16][4];
            for (int kk = 0; kk < TILE / 16; kk++) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
            wg_fence();
            for (int kk = 0; kk < TILE / 16; kk++) wgmma_rs(o, pa[kk], smem_desc(vcur + kk * 2048, 16, 1024));
            wg_commit();
            wg_wait0();
        }
        __syncthreads();                                          // done with buffer cur before it refills
    }
    store_forward(out, lse, o, m, l, b, h, NH, r0, T);
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
attention_backward_wgmma(floatX* dqkv, float* dq_acc, const floatX* dout, const floatX* qkv, const float* lse,
                         const float* D, int B, int T, int NH) {
    floatX* ks = reinterpret_cast<floatX*>((reinterpret_cast<unsigned long long>(smem16) + 1023) & ~1023ull);
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
    load_tile_sw<TILE, 128>(ks, q + C, kt * TILE, T, C3);
    load_tile_sw<TILE, 128>(vs, q + 2 * C, kt * TILE, T, C3);
    load_tile_sw<TILE, 128>(tiles, q, kt * TILE, T, C3);                // the first query tile (the diagonal)
    load_tile_sw<TILE, 128>(tiles + TILE * HS, dO, kt * TILE, T, C);
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
            load_tile_sw<TILE, 128>(tiles + 2 * (cur ^ 1) * TILE * HS, q, (qt + 1) * TILE, T, C3);
            load_tile_sw<TILE, 128>(tiles + (2 * (cur ^ 1) + 1) * TILE * HS, dO, (qt + 1) * TILE, T, C);
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
        wg_wait0();
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
            *reinterpret_cast<unsigned*>(dsc + jl0 * 128 + ((n ^ (jl0 % 8)) * 16) + 4 * tig) = da[n / 2][n % 2 * 2];
            *reinterpret_cast<unsigned*>(dsc + jl1 * 128 + ((n ^ (jl1 % 8)) * 16) + 4 * tig) = da[n / 2][n % 2 * 2 + 1];
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
        wg_wait0();                                               // dV, dK and dQ done: Q and dO are free
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
    store_dkdv(dqkv, dk, dv, b, h, NH, j0, T);
}
#endif
