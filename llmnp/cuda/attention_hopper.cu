// Causal self-attention on Hopper's warpgroup instructions (sm_90a: wgmma reading shared memory
// directly), head size 64 (every GPT-2 size): the forward and the fused backward of attention.cu's
// tensor-core kernels, which stay the portable path (pre-Hopper GPUs, other head sizes) and the
// reference these are tested against. Same outputs; the inputs come through tensor maps (TMA: the copy
// engine copies them in); the backward's companions are attention_backward_rowdot before it (which also
// lays lse and D out in rows of 16-byte multiples, as tensor copies need) and its own
// attention_backward_dq_store_tiles after it (dq_acc is kept in 64-query tiles here, in rows there);
// the online softmax, its output and the backward's element-wise step are attention.cu's, whose mma.sync
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

// where the 16-byte chunk c of row r of a swizzled tile lies: its byte offset (128-byte rows, above)
__device__ __forceinline__ int swizzled(int r, int c) { return r * 128 + ((c ^ (r % 8)) * 16); }

// the dynamic shared memory's first 1024-byte boundary (the launchers add 1 KB for it), as a pointer the
// compiler knows is shared, so its loads and stores are LDS/STS rather than generic ones
__device__ __forceinline__ floatX* smem_aligned_1024() {
    return smem16 + ((1024 - (smem_u32(smem16) & 1023)) & 1023) / sizeof(floatX);
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
// wait until at most N of this warpgroup's committed groups of products are still running (they finish in order)
template <int N> __device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }
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

// The copy engine's tensor copies (TMA): a box of a tensor, described by a tensor map that the launcher
// built (runtime.py tensor_map: where, shape, strides, box, swizzle), copied into shared memory, its bytes
// counted on an mbarrier in shared memory as they arrive
struct alignas(64) TensorMap { char bytes[128]; };        // the driver's CUtensorMap
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(smem_u32(bar)), "r"(count) : "memory");
}
// this thread's arrival on bar, and `bytes` more to come from the copy engine before its phase completes
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                 :: "r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// wait until bar's phase of parity `phase` has completed
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned phase) {
    asm volatile("{\n.reg .pred done;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n}\n" :: "r"(smem_u32(bar)), "r"(phase) : "memory");
}
// the box of `map` at coordinates (c0 innermost, c1, c2) into dst, counted on bar
__device__ __forceinline__ void tma_load_3d(void* dst, const TensorMap* map, int c0, int c1, int c2,
                                            unsigned long long* bar) {
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n"
                 :: "r"(smem_u32(dst)), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int c0, int c1, unsigned long long* bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 :: "r"(smem_u32(dst)), "l"(map), "r"(c0), "r"(c1), "r"(smem_u32(bar)) : "memory");
}

// The forward: grid (ceil(T/128), B*NH), 256 threads, two warpgroups of 64 queries; the longest query
// tiles start first. Per 64-key tile each warpgroup starts S = Q K^T (wgmma, both in shared memory) and
// the previous tile's O += P V (wgmma, P from registers) together, works out this tile's softmax step
// in registers while the P V product runs, then rescales O to the new max once it is done. Thread 0 has
// the copy engine copy the tiles in (tensor copies of qkv's map, each stage's bytes counted on its
// mbarrier, which every thread waits on). Shared (dynamic, 64 KB and up to 1 KB to align it to 1024
// bytes): Q (128 rows), then K and V in three stages (64 rows each): the next tile is copied in while
// this tile's K and the previous tile's V are being read; then the stages' mbarriers.
#define FWD_STAGES 3
extern "C" __global__ void __launch_bounds__(256) attention_forward_wgmma(floatX* out, float* lse, const floatX* qkv,
                                                                            int B, int T, int NH, const TensorMap* maps) {
    floatX* qs = smem_aligned_1024();
    floatX* ks = qs + WG_ROWS * HS;                               // FWD_STAGES tiles
    floatX* vs = ks + FWD_STAGES * TILE * HS;                     // FWD_STAGES tiles
    const int C = NH * HS;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);   // the compiler sees it is the same across a warp
    const int warp = (threadIdx.x / 32) % 4, g = threadIdx.x % 32 / 4;
    unsigned long long* full = reinterpret_cast<unsigned long long*>(vs + FWD_STAGES * TILE * HS);   // [FWD_STAGES]
    if (threadIdx.x == 0) {                                       // maps[0]: qkv (B, T, 3C) in 64 x 64 boxes
        for (int s = 0; s < FWD_STAGES; s++) mbar_init(&full[s], 1);
        fence_async_shared();                                     // the barriers, visible to the copy engine
        mbar_expect_tx(&full[0], (WG_ROWS + 2 * TILE) * HS * sizeof(floatX));
        tma_load_3d(qs, maps, h * HS, qt * WG_ROWS, b, &full[0]);
        tma_load_3d(qs + TILE * HS, maps, h * HS, qt * WG_ROWS + TILE, b, &full[0]);
        tma_load_3d(ks, maps, C + h * HS, 0, b, &full[0]);
        tma_load_3d(vs, maps, 2 * C + h * HS, 0, b, &full[0]);
    }
    const int row_base = qt * WG_ROWS + wg * 64;                  // this warpgroup's first query
    const int r0 = row_base + warp * 16 + g;                      // this thread's query rows: r0, r0 + 8
    const int my_last = row_base / TILE;                          // the diagonal key tile of this warpgroup
    const int last = min((qt * WG_ROWS + WG_ROWS - 1) / TILE, (T - 1) / TILE);   // the block's last key tile
    const unsigned long long qd = smem_desc(qs + wg * 64 * HS, 16, 1024);
    const unsigned long long kd = smem_desc(ks, 16, 1024), vd = smem_desc(vs, 16, 1024);
    constexpr unsigned TD = TILE * HS * 2 / 16;                   // a 64 x 64 bf16 tile in descriptor units
    float o[HS / 8][4];
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};    // rows r0, r0 + 8: running max (base 2), sum
    unsigned pa[TILE / 16][4];                                    // the previous tile's P, as A fragments
    for (int kt = 0; kt <= last; kt++) {
        __syncthreads();                                          // tile kt - 2's buffers are free (and at
        if (kt < last && threadIdx.x == 0) {                      // kt = 0 the barriers initialized)
            const int next = (kt + 1) % FWD_STAGES;
            mbar_expect_tx(&full[next], 2 * TILE * HS * sizeof(floatX));
            tma_load_3d(ks + next * TILE * HS, maps, C + h * HS, (kt + 1) * TILE, b, &full[next]);
            tma_load_3d(vs + next * TILE * HS, maps, 2 * C + h * HS, (kt + 1) * TILE, b, &full[next]);
        }
        mbar_wait(&full[kt % FWD_STAGES], (kt / FWD_STAGES) & 1);   // tile kt in
        if (kt <= my_last && row_base < T) {
            float s[TILE / 8][4];                                 // written by the first wgmma (no accumulate)
            const unsigned long long kcur = kd + kt % FWD_STAGES * TD, vprev = vd + (kt + FWD_STAGES - 1) % FWD_STAGES * TD;
            wg_fence();
            for (int kk = 0; kk < HS / 16; kk++) wgmma_ss(s, qd + kk * 2, kcur + kk * 2, kk > 0);
            wg_commit();
            if (kt > 0)
                for (int kk = 0; kk < TILE / 16; kk++) wgmma_rs(o, pa[kk], vprev + kk * 128);
            wg_commit();                                          // (an empty group on the first tile)
            wg_wait<1>();                                         // S is done
            float c[2];
            softmax_scores(s, m, l, c, kt * TILE, r0, kt == my_last || (kt + 1) * TILE > T, T);
            wg_wait<0>();                                         // O += P V of the previous tile is done
            for (int n = 0; n < HS / 8; n++)
                for (int e = 0; e < 4; e++) o[n][e] *= c[e / 2];
            for (int kk = 0; kk < TILE / 16; kk++) acc_to_a(pa[kk], s[2 * kk], s[2 * kk + 1]);
        }
    }
    if (row_base < T) {                                           // the last tile's P V
        wg_fence();
        for (int kk = 0; kk < TILE / 16; kk++) wgmma_rs(o, pa[kk], vd + my_last % FWD_STAGES * TD + kk * 128);
        wg_commit();
        wg_wait<0>();
    }
    store_forward(out, lse, o, m, l, b, h, NH, r0, T);
}

// The backward, its warpgroups specialized (dev/cuda/attention_hopper_64keys.cu has the one-warpgroup form
// it replaced): grid (ceil(T/128), B*NH), three warpgroups per block of 128 keys, the longest blocks
// (the first keys) first; one block per SM (147 KB of shared memory, 160 registers).
//   Consumers, warpgroups 0 and 1: 64 keys each, their dK and dV in registers, walking the query tiles
//   (64 queries) from their diagonal to the end. Per tile:
//     S^T = K Q^T and dP^T = V dO^T  (wgmma, both operands in shared memory, K-major)
//     P^T, dS^T in registers         (attention_backward_mma's element-wise step; only the diagonal and
//                                     last tiles are masked)
//     dV += P^T dO, dK += dS^T Q     (wgmma, A from registers, B = dO, Q in shared memory, N-major)
//     dS^T into shared memory        (warpgroup 1 writes zeros on the block's first tile: its keys are
//                                     all after those queries)
//   Producer, warpgroup 2: its thread 0 has the copy engine copy K and V in, then the query tiles (Q, dO,
//   lse, D; WS_STAGES stages, so the copies run two tiles ahead) by tensor copies (TMA), each stage's
//   bytes counted on an mbarrier it waits on before the warpgroup announces the tile. Per tile the
//   warpgroup computes dQ = dS K over all 128 keys (wgmma, A = dS^T read transposed, B = K N-major),
//   started before it copies and announces the next tiles and waited for after, then writes it to a
//   shared staging buffer in its registers' order and adds that into dq_acc's tile with one bulk
//   reduction (cp.reduce.async.bulk: the copy engine does the 4,096 additions). dq_acc (B*NH,
//   ceil(T/64), 64 x 64) float keeps each query tile in that order, so the tile is 16 KB in one piece;
//   attention_backward_dq_store_tiles puts it in rows.
// So Q and dO are copied once per 128 keys, dq_acc takes half the additions the one-warpgroup form
// made, and the consumers wait on neither the copies, dQ nor its additions. Shared (1024-byte aligned,
// 128-byte swizzle, 64 x 64 bf16 tiles of 8 KB): K, V (128 keys), Q | dO per stage, dS^T (128 keys) per
// buffer, then lse and D per stage, two dq staging buffers (64 x 64 float) and the mbarriers (one per
// stage, one for K and V). The warpgroups meet at named barriers (bar 0 is __syncthreads), each counting
// 384 threads: one side arrives (bar.arrive), the other waits (bar.sync):
//   FULL[s]    producer -> consumers: the query tile of stage s is in shared memory
//   EMPTY[s]   consumers -> producer: done reading stage s (their dV, dK products finished)
//   DSFULL[d]  consumers -> producer: dS^T buffer d written
//   DSEMPTY[d] producer -> consumers: the dQ product reading dS^T buffer d finished
// Every arrival is matched by one wait: a side arrives only where the other will wait, so no barrier
// is left half-counted at the end.
#define WS_STAGES 3                                   // query tiles (Q, dO, lse, D) in shared memory
#define WS_DS 2                                       // dS^T buffers
#define BAR_FULL 1
#define BAR_EMPTY (BAR_FULL + WS_STAGES)
#define BAR_DSFULL (BAR_EMPTY + WS_STAGES)
#define BAR_DSEMPTY (BAR_DSFULL + WS_DS)
#define BAR_PRODUCER (BAR_DSEMPTY + WS_DS)            // the producer's own 128 threads
#define BAR_CONSUMERS (BAR_PRODUCER + 1)              // the two consumer warpgroups' 256 (then one for each)
static_assert(BAR_CONSUMERS + 2 < 16, "16 named barriers");
// dst[0 .. bytes/4) += src[...] (floats), global from shared, by the copy engine (TMA's bulk reduction)
__device__ __forceinline__ void bulk_reduce_add(float* dst, const float* src, unsigned bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                 :: "l"(dst), "r"(smem_u32(src)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// wait until at most N of this thread's committed bulk groups are still reading shared memory / running
template <int N> __device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" :: "n"(N) : "memory");
}
template <int N> __device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group %0;\n" :: "n"(N) : "memory"); }
__device__ __forceinline__ void bar_sync(int id, int threads) { asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(threads) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id, int threads) { asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(threads) : "memory"); }

// The consumers' end, warpgroup by warpgroup: its 64 keys' dk / sqrt(HS) and dv (bf16) written to shared
// memory (two 64 x 64 tiles at `stage`, 128-byte swizzled like the others; `bar` the warpgroup's named
// barrier), then copied out in 16-byte stores, a whole 128-byte row per 8 threads (attention.cu's
// store_dkdv leaves a row in 16 pieces of 4 bytes), keys at or past T left alone. Unless dbias_kv is
// null, thread t then sums column t of the two tiles (dk's 64, then dv's) over the keys below T, into
// row b * ceil(T/64) + key0 / 64 of dbias_kv (B * ceil(T/64), 2C) float, k | v columns: partial sums of
// the qkv bias gradient, one row per 64 keys.
__device__ __forceinline__ void store_dkdv_staged(floatX* dqkv, float* dbias_kv, const float (&dk)[HS / 8][4],
                                                  const float (&dv)[HS / 8][4], char* stage, int b, int h, int NH,
                                                  int key0, int T, int bar) {
    const int t = threadIdx.x % 128, warp = t / 32, g = t % 32 / 4, tig = t % 4, C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    for (int n = 0; n < HS / 8; n++)
        for (int e = 0; e < 2; e++) {                             // rows warp*16 + g and + 8
            const int r = warp * 16 + g + 8 * e, at = swizzled(r, n) + 4 * tig;
            *reinterpret_cast<unsigned*>(stage + at) = pack_bf16(dk[n][2 * e] * scale, dk[n][2 * e + 1] * scale);
            *reinterpret_cast<unsigned*>(stage + TILE * 128 + at) = pack_bf16(dv[n][2 * e], dv[n][2 * e + 1]);
        }
    bar_sync(bar, 128);                                           // the warpgroup's rows are all written
    const int c = t % 8;                                          // 16-byte chunk of a row
    for (int r = t / 8; r < 2 * TILE; r += 16) {                  // rows 0..63: dk's, 64..127: dv's
        const int key = key0 + r % TILE;
        if (key >= T) continue;
        const uint4 v = *reinterpret_cast<const uint4*>(stage + swizzled(r, c));
        *reinterpret_cast<uint4*>(dqkv + ((long long)b * T + key) * C3 + (r < TILE ? C : 2 * C) + h * HS + c * 8) = v;
    }
    if (dbias_kv == nullptr || key0 >= T) return;
    const int col = t % HS;                                       // thread t: column col of dk (t < 64) or dv
    const char* tile = stage + (t / HS) * TILE * 128;
    float sum = 0.0f;
    for (int r = 0; r < TILE && key0 + r < T; r++) {
        const char* at = tile + swizzled(r, col / 8) + (col % 8) * 2;
        sum += __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(at));
    }
    dbias_kv[((long long)b * ((T + TILE - 1) / TILE) + key0 / TILE) * 2 * C + (t / HS) * C + h * HS + col] = sum;
}

extern "C" __global__ void __launch_bounds__(384, 1)
attention_backward_wgmma(floatX* dqkv, float* dq_acc, float* dbias_kv, int B, int T, int NH, const TensorMap* maps) {
    floatX* ks = smem_aligned_1024();
    floatX* vs = ks + 2 * TILE * HS;                              // K, V: [128 keys][HS]
    floatX* tiles = vs + 2 * TILE * HS;                           // [WS_STAGES][Q, dO][TILE][HS]
    floatX* dst = tiles + WS_STAGES * 2 * TILE * HS;              // dS^T: [WS_DS][128 keys][TILE queries]
    float* ls = reinterpret_cast<float*>(dst + WS_DS * 2 * TILE * TILE);   // [WS_STAGES][TILE]
    float* Ds = ls + WS_STAGES * TILE;                            // [WS_STAGES][TILE]
    float* dqs = Ds + WS_STAGES * TILE;                           // dq staging: [2][TILE * HS] float
    unsigned long long* full = reinterpret_cast<unsigned long long*>(dqs + 2 * TILE * HS);   // [WS_STAGES + 1]
    const int C = NH * HS;
    const int kt = blockIdx.x;                                    // keys kt*128 .. kt*128 + 127
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);   // the compiler sees it is the same across a warp
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const int q0 = 2 * kt;                                        // the first query tile: the diagonal's
    const int n = (T + TILE - 1) / TILE - q0;                     // query tiles of this block
    constexpr unsigned TD = TILE * HS * 2 / 16;                   // a 64 x 64 bf16 tile in descriptor units
    const unsigned long long kd = smem_desc(ks, 16, 1024), vd = smem_desc(vs, 16, 1024);
    const unsigned long long td = smem_desc(tiles, 16, 1024), dsd = smem_desc(dst, 16, 1024);
    if (wg == 2) {                                                // the producer
        const int t = threadIdx.x - 256;
        // maps (attention.py hopper_maps): [0] qkv (B, T, 3C) and [1] dout (B, T, C) in 64 x 64 boxes swizzled
        // like every tile, [2] lse and [3] D (B*NH rows of T) in boxes of 64; rows at or past T read as zeros
        auto load_query_tile = [&](int i) {                       // thread 0: tile q0 + i into stage i % WS_STAGES
            const int s = i % WS_STAGES, row0 = (q0 + i) * TILE;
            mbar_expect_tx(&full[s], 2 * TILE * HS * sizeof(floatX) + 2 * TILE * sizeof(float));
            tma_load_3d(tiles + 2 * s * TILE * HS, &maps[0], h * HS, row0, b, &full[s]);
            tma_load_3d(tiles + (2 * s + 1) * TILE * HS, &maps[1], h * HS, row0, b, &full[s]);
            tma_load_2d(ls + s * TILE, &maps[2], row0, bh, &full[s]);
            tma_load_2d(Ds + s * TILE, &maps[3], row0, bh, &full[s]);
        };
        if (t == 0) {
            for (int s = 0; s <= WS_STAGES; s++) mbar_init(&full[s], 1);   // full[WS_STAGES]: K and V
            fence_async_shared();                                 // the barriers, visible to the copy engine
            mbar_expect_tx(&full[WS_STAGES], 4 * TILE * HS * sizeof(floatX));
            for (int r = 0; r < 2; r++) {                         // K, V: 128 keys, two boxes each
                tma_load_3d(ks + r * TILE * HS, &maps[0], C + h * HS, (2 * kt + r) * TILE, b, &full[WS_STAGES]);
                tma_load_3d(vs + r * TILE * HS, &maps[0], 2 * C + h * HS, (2 * kt + r) * TILE, b, &full[WS_STAGES]);
            }
            for (int i = 0; i < WS_STAGES - 1 && i < n; i++) load_query_tile(i);
            mbar_wait(&full[WS_STAGES], 0);                       // K, V in
            mbar_wait(&full[0], 0);                               // tile 0 in
        }
        __syncwarp();                                             // (thread 0's wait holds the block's first
        bar_arrive(BAR_FULL, 384);                                //  FULL: it counts warp 0's arrival)
        for (int i = 0; i <= n; i++) {        // tile i - 1's dQ started, tile i + WS_STAGES - 1 in, tile i + 1
            const int p = i - 1, d = (p + WS_DS) % WS_DS;         // announced, tile i - 1's dQ added (from dS^T d)
            float dq[HS / 8][4];                                  // rows: queries warp*16 + g (+ 8)
            if (i > 0) {                                          // dQ of query tile q0 + p, running while
                bar_sync(BAR_DSFULL + d, 384);                    // the next tiles are copied and announced
                wg_fence();
                for (int kk = 0; kk < 2 * TILE / 16; kk++) wgmma_ss_t(dq, dsd + d * 2 * TD + kk * 128, kd + kk * 128, kk > 0);
                wg_commit();
            }
            if (i + WS_STAGES - 1 < n) {
                if (i >= 1) bar_sync(BAR_EMPTY + (i - 1) % WS_STAGES, 384);   // tile i - 1's stage is free
                if (t == 0) load_query_tile(i + WS_STAGES - 1);
            }
            if (i + 1 < n) {
                if (t == 0) mbar_wait(&full[(i + 1) % WS_STAGES], ((i + 1) / WS_STAGES) & 1);   // tile i + 1 in
                __syncwarp();
                bar_arrive(BAR_FULL + (i + 1) % WS_STAGES, 384);
            }
            if (i == 0) continue;
            wg_wait<0>();
            if (p + WS_DS < n) bar_arrive(BAR_DSEMPTY + d, 384);
            // into dq_acc's tile by one bulk addition: the registers into staging buffer p % 2 in their own
            // order (float4 n8 * 128 + t: thread t's dq[n8]), which is the tile's order in dq_acc too
            float* stage = dqs + (p % 2) * TILE * HS;
            if (t == 0) bulk_wait_read<1>();                      // the addition from it two tiles ago has read it
            bar_sync(BAR_PRODUCER, 128);
            for (int n8 = 0; n8 < HS / 8; n8++)
                *reinterpret_cast<float4*>(stage + (n8 * 128 + t) * 4) =
                    make_float4(dq[n8][0], dq[n8][1], dq[n8][2], dq[n8][3]);
            fence_async_shared();                                 // the writes, visible to the copy engine
            bar_sync(BAR_PRODUCER, 128);
            if (t == 0) {
                const long long tile = (long long)bh * ((T + TILE - 1) / TILE) + q0 + p;   // (b, h, query tile)
                bulk_reduce_add(dq_acc + tile * TILE * HS, stage, TILE * HS * 4);
                bulk_commit();
            }
        }
        if (t == 0) bulk_wait<0>();                              // the last additions done before the block ends
        return;
    }
    // the consumers: warpgroup wg holds keys j0, j0 + 8 (its 64 keys start at (q0 + wg) * TILE)
    const int jl0 = warp * 16 + g, jl1 = jl0 + 8;                 // this thread's two keys, in its 64
    const int j0 = (q0 + wg) * TILE + jl0, j1 = j0 + 8;
    const float sl2 = LOG2E / sqrtf((float)HS);
    const unsigned long long kdw = kd + wg * TD, vdw = vd + wg * TD;
    float dk[HS / 8][4], dv[HS / 8][4];
    for (int n8 = 0; n8 < HS / 8; n8++)
        for (int e = 0; e < 4; e++) dk[n8][e] = dv[n8][e] = 0.0f;
    for (int i = 0; i < n; i++) {
        const int s = i % WS_STAGES, d = i % WS_DS, qt = q0 + i;
        const unsigned long long qd = td + 2 * s * TD, dod = qd + TD;
        const bool active = qt >= q0 + wg;                        // else every key here is after every query
        char* dsc = reinterpret_cast<char*>(dst) + (d * 2 + wg) * TILE * 128;   // this warpgroup's 64 rows
        unsigned pa[TILE / 16][4], da[TILE / 16][4];
        bar_sync(BAR_FULL + s, 384);
        if (active) {
            float st[TILE / 8][4], dpt[TILE / 8][4];              // S^T and dP^T: rows keys, columns queries
            wg_fence();
            for (int kk = 0; kk < HS / 16; kk++) wgmma_ss(st, kdw + kk * 2, qd + kk * 2, kk > 0);
            for (int kk = 0; kk < HS / 16; kk++) wgmma_ss(dpt, vdw + kk * 2, dod + kk * 2, kk > 0);
            wg_commit();
            wg_wait<0>();
            if (qt == q0 + wg || (qt + 1) * TILE > T)             // the diagonal and last tiles: mask
                for (int n8 = 0; n8 < TILE / 8; n8++)
                    for (int e = 0; e < 4; e++) {
                        const int iq = qt * TILE + n8 * 8 + 2 * tig + (e & 1), j = e < 2 ? j0 : j1;
                        if (!(iq >= j && iq < T && j < T)) st[n8][e] = -INFINITY;
                    }
            for (int n8 = 0; n8 < TILE / 8; n8++) {
                const float2 l2 = *reinterpret_cast<const float2*>(ls + s * TILE + n8 * 8 + 2 * tig);
                const float2 d2 = *reinterpret_cast<const float2*>(Ds + s * TILE + n8 * 8 + 2 * tig);
                const float lse2[2] = {l2.x * LOG2E, l2.y * LOG2E}, Dq[2] = {d2.x, d2.y};
                for (int e = 0; e < 4; e++) {
                    const float p = exp2_ftz(fmaf(st[n8][e], sl2, -lse2[e & 1]));
                    st[n8][e] = p;
                    dpt[n8][e] = p * (dpt[n8][e] - Dq[e & 1]);
                }
            }
            for (int kk = 0; kk < TILE / 16; kk++) {
                acc_to_a(pa[kk], st[2 * kk], st[2 * kk + 1]);
                acc_to_a(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
            }
            wg_fence();
            for (int kk = 0; kk < TILE / 16; kk++) {
                wgmma_rs(dv, pa[kk], dod + kk * 128);
                wgmma_rs(dk, da[kk], qd + kk * 128);
            }
            wg_commit();
        }
        if (i >= WS_DS) bar_sync(BAR_DSEMPTY + d, 384);           // tile i - WS_DS's dQ has read buffer d
        for (int n8 = 0; n8 < TILE / 8; n8++) {                   // dS^T, swizzled like the tiles (0 if not active)
            *reinterpret_cast<unsigned*>(dsc + swizzled(jl0, n8) + 4 * tig) = active ? da[n8 / 2][n8 % 2 * 2] : 0u;
            *reinterpret_cast<unsigned*>(dsc + swizzled(jl1, n8) + 4 * tig) = active ? da[n8 / 2][n8 % 2 * 2 + 1] : 0u;
        }
        fence_async_shared();                                     // dS^T, visible to the producer's wgmma
        bar_arrive(BAR_DSFULL + d, 384);
        wg_wait<0>();                                             // dV and dK done: stage s is free
        if (i + WS_STAGES < n) bar_arrive(BAR_EMPTY + s, 384);
    }
    bar_sync(BAR_CONSUMERS, 256);                       // both done reading the stages' Q and dO: their space is free
    store_dkdv_staged(dqkv, dbias_kv, dk, dv, reinterpret_cast<char*>(tiles) + wg * 2 * TILE * 128, b, h, NH,
                      (q0 + wg) * TILE, T, BAR_CONSUMERS + 1 + wg);
}

// attention_backward_wgmma's dq_acc (B*NH, ceil(T/64), 64 x 64 floats, float4 n8 * 128 + t of a tile
// holding the producer thread t's dq[n8]) / sqrt(HS) into dqkv's q part: grid (ceil(T/64), B*NH), 128
// threads; the tile turned into bf16 rows in shared memory, then stored 16 bytes a thread. Unless dbias_q
// is null, the block's column sums of what it stored go to its row b * gridDim.x + blockIdx.x of dbias_q
// (B ceil(T/64), C) float.
extern "C" __global__ void __launch_bounds__(128)
attention_backward_dq_store_tiles(floatX* dqkv, float* dbias_q, const float* dq_acc, int B, int T, int NH) {
    __shared__ __align__(16) floatX rows[TILE][HS + 8];
    __shared__ float sums[16][HS];
    const int qt = blockIdx.x, bh = blockIdx.y, b = bh / NH, h = bh % NH, C = NH * HS, t = threadIdx.x;
    const int warp = t / 32, g = t % 32 / 4, tig = t % 4;
    const float scale = 1.0f / sqrtf((float)HS);
    const float4* src = reinterpret_cast<const float4*>(dq_acc + ((long long)bh * gridDim.x + qt) * TILE * HS);
    float4 f[HS / 8];
    for (int n8 = 0; n8 < HS / 8; n8++) f[n8] = src[n8 * 128 + t];
    for (int n8 = 0; n8 < HS / 8; n8++) {
        const int r = warp * 16 + g, c = n8 * 8 + 2 * tig;       // rows r and r + 8, columns c and c + 1
        *reinterpret_cast<unsigned*>(&rows[r][c]) = pack_bf16(f[n8].x * scale, f[n8].y * scale);
        *reinterpret_cast<unsigned*>(&rows[r + 8][c]) = pack_bf16(f[n8].z * scale, f[n8].w * scale);
    }
    __syncthreads();
    const int c = t % 8;                                          // this thread's 16-byte pack of a row
    float sum[PACK] = {};
    for (int r = t / 8; r < TILE; r += 16) {
        const int row = qt * TILE + r;
        if (row >= T) break;
        const x128 v = *reinterpret_cast<const x128*>(&rows[r][c * PACK]);
        store128(dqkv + ((long long)b * T + row) * 3 * C + h * HS + c * PACK, v);
        for (int k = 0; k < PACK; k++) sum[k] += toF(v.v[k]);
    }
    if (dbias_q == nullptr) return;
    for (int k = 0; k < PACK; k++) sums[t / 8][c * PACK + k] = sum[k];
    __syncthreads();
    if (t < HS) {
        float s = 0.0f;
        for (int y = 0; y < 16; y++) s += sums[y][t];
        dbias_q[((long long)b * gridDim.x + qt) * C + h * HS + t] = s;
    }
}
#endif
