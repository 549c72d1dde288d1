// Variant of attention.cu's tensor-core forward on Hopper's warpgroup instructions (sm_90a, wgmma):
// two warpgroups (8 warps, 256 threads) per 128-query tile, each warpgroup 64 queries; per 64-key tile
// each computes S = Q K^T (64 x 64) with four wgmma.m64n64k16 reading Q and K from shared memory (no
// ldmatrix), then O += P V with P taken from registers. The online softmax, masking and output are
// attention.cu's mma.sync forward's, whose accumulator layout wgmma's m64nN shares (warp w of a
// warpgroup holds its rows 16w..16w+15). HS = 64 (every GPT-2 size). Compiled with -arch=sm_90a (empty
// for any other target).
//
// Shared tiles: one token per 128-byte row (HS = 64 bf16), 8-row atoms of 1024 bytes in wgmma's 128-byte
// swizzle: the 16-byte chunk c of row r is stored at chunk c ^ (r % 8), so the copies into shared memory
// and the tensor cores' reads are free of bank conflicts. Q and K (the head dimension is wgmma's K) are
// K-major: a k-step of 16 moves the start address 32 bytes, the next 8 rows are 1024 bytes on (stride
// byte offset). V (keys are K, the head dimension N) is N-major in the same storage: a k-step of 16 keys
// moves 2048 bytes, the next 8 keys are 1024 bytes on; the instruction transposes B.
#include "attention.cu"

#if LLMNP_BF16 && HS == 64 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ROWS 128                            // query rows per block: two warpgroups of 64
#define TILE_BYTES (TILE * HS * 2)             // one 64 x 64 bf16 tile: 8 KB

// start copying `rows` rows of one head (HS = 64 bf16 = 128 bytes each) into a swizzled shared tile
// (rows at or past T: zeros)
__device__ __forceinline__ void load_tile_sw(floatX* tile, const floatX* src, int row0, int rows, int T, int stride) {
    char* base = reinterpret_cast<char*>(tile);
    for (int i = threadIdx.x; i < rows * 8; i += blockDim.x) {
        const int r = i / 8, c = i % 8;                           // row, 16-byte chunk
        const bool ok = row0 + r < T;
        cp_async16(base + r * 128 + ((c ^ (r % 8)) * 16), src + (long long)(ok ? row0 + r : 0) * stride + c * 8, ok);
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

// grid (ceil(T/128), B*NH), 256 threads; the longest query tiles start first. Shared (dynamic, 64 KB,
// 1024-byte aligned): Q (128 rows), then K and V double-buffered (64 rows each).
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
    load_tile_sw(qs, q, qt * WG_ROWS, WG_ROWS, T, C3);
    load_tile_sw(ks, q + C, 0, TILE, T, C3);
    load_tile_sw(vs, q + 2 * C, 0, TILE, T, C3);
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
            load_tile_sw(ks + (cur ^ 1) * TILE * HS, q + C, (kt + 1) * TILE, TILE, T, C3);
            load_tile_sw(vs + (cur ^ 1) * TILE * HS, q + 2 * C, (kt + 1) * TILE, TILE, T, C3);
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
#endif
