// dev/cuda/attention_warp32.cu: a variant of llmnp/cuda/attention.cu, kept for the record, not built.
// Its tensor-core kernels give each warp 32 rows (two m16 tiles; 128 rows per block) so that every B
// fragment read from shared memory feeds four mma instead of two. Measured on the H100 (d12, bf16,
// B=64, T=1024, 12 layers, dev/cuda/profile_step.py --kernels): forward 11.3 ms (mainline 7.0),
// dk/dv 19.0 ms (13.8), dq 11.1 ms (9.2) - slower: 216-255 registers leave 8 warps per SM (mainline
// 12-16) and 128-row causal blocks waste more of the diagonal. Launch grid: ceil(T/128) instead of
// ceil(T/64); everything else as mainline.
// Causal multi-head self-attention, flash-attention style (llmnp/attention.py is the reference).
//
// forward:  out = softmax(q k^T / sqrt(HS), causal) v per head, and lse (B,NH,T) float, the log-sum-exp
//           of each softmax row. Online softmax over key tiles: no (T,T) buffer is ever written.
// backward: D = rowsum(dout * out) (B,NH,T) float (kernel1), then the probabilities are recomputed from
//           q, k and lse: dv = P^T dout, dP = dout v^T, dS = P (dP - D) / sqrt(HS), dk = dS^T q, dq = dS k.
//           dqkv is overwritten. dk/dv (one pass per key tile) and dq (one pass per query tile) are
//           separate kernels, so nothing is accumulated with atomics.
// Two implementations: kernels 1-3, fp32 arithmetic on CUDA cores, any HS up to 128, fp32 or bf16
// storage (the fp32 path, and the reference for the other); kernels 2/4/5 (forward 2, backward 4, 5),
// bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation) for HS a multiple of 16 up to 64.
// Shapes: B batch, T time, NH heads, HS head size (a -D constant), C = NH*HS; qkv (B,T,3C) = Q | K | V
// blocks of C; head h holds channels h*HS..(h+1)*HS of each; out, dout (B,T,C).
#include "common.cuh"

#define LOG2E 1.4426950408889634f

// ------------------------------------------------------------------------------------------------------
// CUDA-core kernels: one thread per query (forward, dq) or per key (dk/dv), the other side in shared tiles

#define ROWS1 64    // threads per block, one row each
#define TILE1 32    // rows of the other operand per shared-memory tile

extern "C" __global__ void attention_forward_kernel1(floatX* out, float* lse, const floatX* qkv, int B, int T, int NH) {
    __shared__ float ks[TILE1][HS], vs[TILE1][HS];
    const int C = NH * HS, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int t = blockIdx.x * ROWS1 + threadIdx.x;
    const floatX* base = qkv + (long long)b * T * C3 + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float q[HS], o[HS];
    for (int d = 0; d < HS; d++) {
        q[d] = t < T ? toF(base[(long long)t * C3 + d]) * scale : 0.0f;
        o[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int last = min(T - 1, blockIdx.x * ROWS1 + ROWS1 - 1);     // the block's last query
    for (int k0 = 0; k0 <= last; k0 += TILE1) {
        __syncthreads();
        for (int i = threadIdx.x; i < TILE1 * HS; i += blockDim.x) {
            const int r = i / HS, d = i % HS;
            const bool ok = k0 + r < T;
            ks[r][d] = ok ? toF(base[(long long)(k0 + r) * C3 + C + d]) : 0.0f;
            vs[r][d] = ok ? toF(base[(long long)(k0 + r) * C3 + 2 * C + d]) : 0.0f;
        }
        __syncthreads();
        if (t >= T) continue;
        for (int j = 0; j < TILE1 && k0 + j <= t; j++) {
            float s = 0.0f;
            for (int d = 0; d < HS; d++) s += q[d] * ks[j][d];
            const float m_new = fmaxf(m, s);
            const float corr = expf(m - m_new), p = expf(s - m_new);
            l = l * corr + p;
            for (int d = 0; d < HS; d++) o[d] = o[d] * corr + p * vs[j][d];
            m = m_new;
        }
    }
    if (t < T) {
        floatX* y = out + ((long long)b * T + t) * C + h * HS;
        for (int d = 0; d < HS; d++) y[d] = fromF(o[d] / l);
        lse[(long long)bh * T + t] = m + logf(l);
    }
}

// D[b,h,t] = sum_d dout[b,t,h,d] * out[b,t,h,d]; `lanes` threads per (b, t, h) row: one 16-byte pack
// each when HS is a whole number of packs that divides a warp, else a warp striding over the row
extern "C" __global__ void attention_backward_kernel1(float* D, const floatX* dout, const floatX* out, int B, int T, int NH) {
    constexpr bool packed = HS % PACK == 0 && 32 % (HS / PACK) == 0;
    constexpr int lanes = packed ? HS / PACK : 32;
    const long long rows = (long long)B * T * NH;
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / lanes;   // (b, t, h) flat
    const int sub = threadIdx.x % lanes;
    float sum = 0.0f;
    if (row < rows) {
        if (packed && aligned16(dout) && aligned16(out)) {
            const x128 a = load128(dout + row * HS + sub * PACK), o = load128(out + row * HS + sub * PACK);
            for (int k = 0; k < PACK; k++) sum += toF(a.v[k]) * toF(o.v[k]);
        } else {
            for (int d = sub; d < HS; d += lanes) sum += toF(dout[row * HS + d]) * toF(out[row * HS + d]);
        }
    }
    for (int offset = lanes / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (sub == 0 && row < rows) {
        const int h = (int)(row % NH);
        const long long bt = row / NH;
        D[((long long)(bt / T) * NH + h) * T + bt % T] = sum;
    }
}

// dk, dv: one thread per key; its k and v rows in shared memory (padded rows: no bank conflicts),
// query tiles (q, dout, lse, D) shared. Dynamic shared memory, floats:
// 2*ROWS1*(HS+1) + 2*TILE1*HS + 2*TILE1
extern "C" __global__ void attention_backward_kernel2(floatX* dqkv, const floatX* dout, const floatX* qkv,
                                                      const float* lse, const float* D, int B, int T, int NH) {
    extern __shared__ float smem[];
    float* kr = smem;                           // [ROWS1][HS+1]
    float* vr = kr + ROWS1 * (HS + 1);          // [ROWS1][HS+1]
    float* qs = vr + ROWS1 * (HS + 1);          // [TILE1][HS]
    float* ds = qs + TILE1 * HS;                // [TILE1][HS] dout rows
    float* ls = ds + TILE1 * HS;                // [TILE1] lse
    float* Ds = ls + TILE1;                     // [TILE1] D
    const int C = NH * HS, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int j = blockIdx.x * ROWS1 + threadIdx.x;          // this thread's key
    const floatX* base = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dbase = dout + (long long)b * T * C + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float* myk = kr + threadIdx.x * (HS + 1);
    float* myv = vr + threadIdx.x * (HS + 1);
    for (int d = 0; d < HS; d++) {
        myk[d] = j < T ? toF(base[(long long)j * C3 + C + d]) : 0.0f;
        myv[d] = j < T ? toF(base[(long long)j * C3 + 2 * C + d]) : 0.0f;
    }
    float dk[HS], dv[HS];
    for (int d = 0; d < HS; d++) dk[d] = dv[d] = 0.0f;
    for (int i0 = blockIdx.x * ROWS1; i0 < T; i0 += TILE1) {    // queries before the block's first key see none of its keys
        __syncthreads();
        for (int x = threadIdx.x; x < TILE1 * HS; x += blockDim.x) {
            const int r = x / HS, d = x % HS;
            const bool ok = i0 + r < T;
            qs[x] = ok ? toF(base[(long long)(i0 + r) * C3 + d]) : 0.0f;
            ds[x] = ok ? toF(dbase[(long long)(i0 + r) * C + d]) : 0.0f;
        }
        for (int r = threadIdx.x; r < TILE1; r += blockDim.x) {
            const bool ok = i0 + r < T;
            ls[r] = ok ? lse[(long long)bh * T + i0 + r] : 0.0f;
            Ds[r] = ok ? D[(long long)bh * T + i0 + r] : 0.0f;
        }
        __syncthreads();
        if (j >= T) continue;
        for (int r = 0; r < TILE1; r++) {
            const int i = i0 + r;
            if (i < j || i >= T) continue;                  // key j is visible to queries i >= j
            const float* qi = qs + r * HS;
            const float* di = ds + r * HS;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HS; d++) {
                s += qi[d] * myk[d];
                dp += di[d] * myv[d];
            }
            const float p = expf(s * scale - ls[r]);
            const float dsc = p * (dp - Ds[r]);
            for (int d = 0; d < HS; d++) {
                dv[d] += p * di[d];
                dk[d] += dsc * qi[d];
            }
        }
    }
    if (j < T) {
        floatX* g = dqkv + ((long long)b * T + j) * C3 + h * HS;
        for (int d = 0; d < HS; d++) {
            g[C + d] = fromF(dk[d] * scale);
            g[2 * C + d] = fromF(dv[d]);
        }
    }
}

// dq: one thread per query; its q and dout rows in shared memory, key tiles (k, v) shared.
// Dynamic shared memory, floats: 2*ROWS1*(HS+1) + 2*TILE1*HS
extern "C" __global__ void attention_backward_kernel3(floatX* dqkv, const floatX* dout, const floatX* qkv,
                                                      const float* lse, const float* D, int B, int T, int NH) {
    extern __shared__ float smem[];
    float* qr = smem;                           // [ROWS1][HS+1]
    float* dr = qr + ROWS1 * (HS + 1);          // [ROWS1][HS+1]
    float* ks = dr + ROWS1 * (HS + 1);          // [TILE1][HS]
    float* vs = ks + TILE1 * HS;                // [TILE1][HS]
    const int C = NH * HS, C3 = 3 * C;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int i = blockIdx.x * ROWS1 + threadIdx.x;          // this thread's query
    const floatX* base = qkv + (long long)b * T * C3 + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float* myq = qr + threadIdx.x * (HS + 1);
    float* myd = dr + threadIdx.x * (HS + 1);
    for (int d = 0; d < HS; d++) {
        myq[d] = i < T ? toF(base[(long long)i * C3 + d]) : 0.0f;
        myd[d] = i < T ? toF(dout[((long long)b * T + i) * C + h * HS + d]) : 0.0f;
    }
    const float li = i < T ? lse[(long long)bh * T + i] : 0.0f;
    const float Di = i < T ? D[(long long)bh * T + i] : 0.0f;
    float dq[HS];
    for (int d = 0; d < HS; d++) dq[d] = 0.0f;
    const int last = min(T - 1, blockIdx.x * ROWS1 + ROWS1 - 1);
    for (int k0 = 0; k0 <= last; k0 += TILE1) {
        __syncthreads();
        for (int x = threadIdx.x; x < TILE1 * HS; x += blockDim.x) {
            const int r = x / HS, d = x % HS;
            const bool ok = k0 + r < T;
            ks[x] = ok ? toF(base[(long long)(k0 + r) * C3 + C + d]) : 0.0f;
            vs[x] = ok ? toF(base[(long long)(k0 + r) * C3 + 2 * C + d]) : 0.0f;
        }
        __syncthreads();
        if (i >= T) continue;
        for (int r = 0; r < TILE1 && k0 + r <= i; r++) {
            const float* kj = ks + r * HS;
            const float* vj = vs + r * HS;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HS; d++) {
                s += myq[d] * kj[d];
                dp += myd[d] * vj[d];
            }
            const float p = expf(s * scale - li);
            const float dsc = p * (dp - Di);
            for (int d = 0; d < HS; d++) dq[d] += dsc * kj[d];
        }
    }
    if (i < T) {
        floatX* g = dqkv + ((long long)b * T + i) * C3 + h * HS;
        for (int d = 0; d < HS; d++) g[d] = fromF(dq[d] * scale);
    }
}

// ------------------------------------------------------------------------------------------------------
// Tensor-core kernels (bf16): 4 warps per block, each warp owns 32 rows of a 128-row block; the other
// operand streams through shared memory in 64-row tiles, double-buffered with cp.async (the next tile
// loads while this one is computed). Fragments follow the PTX ISA layout of mma.m16n8k16: lane =
// 4 g + tig; an fp32 accumulator tile (16 x 8) holds rows g and g+8, columns 2 tig and 2 tig + 1. Two
// accumulator tiles side by side are exactly the A operand of the next mma.

#if LLMNP_BF16 && HS % 16 == 0 && HS <= 64
#define TILE 64            // rows per block and per shared tile
#define LDS (HS + 8)       // shared row pitch (bf16): 16-byte aligned rows, ldmatrix without bank conflicts

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// A operand (16 x 16, row-major) at rows r0.., columns c0.. of a shared tile
__device__ __forceinline__ void ldsm_a(unsigned (&a)[4], const floatX* tile, int r0, int c0) {
    const int lane = threadIdx.x % 32;
    const floatX* p = tile + (r0 + lane % 16) * LDS + c0 + (lane / 16) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(smem_u32(p)) : "memory");
}

// B operands of two n-tiles (n0.. and n0+8..) at k-step k0, where B[k][n] = tile[n][k] (e.g. K for q k^T)
__device__ __forceinline__ void ldsm_b(unsigned (&b)[4], const floatX* tile, int n0, int k0) {
    const int lane = threadIdx.x % 32;
    const floatX* p = tile + (n0 + (lane / 16) * 8 + lane % 8) * LDS + k0 + ((lane / 8) % 2) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(smem_u32(p)) : "memory");
}

// B operands of two n-tiles (n0.. and n0+8..) at k-step k0, where B[k][n] = tile[k][n] (e.g. V for P v)
__device__ __forceinline__ void ldsm_bt(unsigned (&b)[4], const floatX* tile, int k0, int n0) {
    const int lane = threadIdx.x % 32;
    const floatX* p = tile + (k0 + lane % 16) * LDS + n0 + (lane / 16) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(smem_u32(p)) : "memory");
}

__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// the A operand for k-step kk made of accumulator tiles 2kk and 2kk+1
__device__ __forceinline__ void acc_to_a(unsigned (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// cp.async of `bytes` (4 or 16) from global to shared; src_ok false writes zeros (and reads nothing)
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool src_ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(src_ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool src_ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(src_ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

// start copying TILE rows of one head (HS bf16 each, `stride` elements apart) from row row0 into a
// shared tile; rows at or past T become zeros
__device__ __forceinline__ void load_tile(floatX* tile, const floatX* src, int row0, int T, int stride) {
    for (int i = threadIdx.x; i < TILE * HS / 8; i += blockDim.x) {
        const int r = i / (HS / 8), c = (i % (HS / 8)) * 8;
        const bool ok = row0 + r < T;
        cp_async16(tile + r * LDS + c, src + (long long)(ok ? row0 + r : 0) * stride + c, ok);
    }
}

// start copying TILE floats of a (B,NH,T) statistic from row row0 (zeros at or past T)
__device__ __forceinline__ void load_stat(float* dst, const float* src, int row0, int T) {
    for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
        const bool ok = row0 + i < T;
        cp_async4(dst + i, src + (ok ? row0 + i : 0), ok);
    }
}

// Each warp owns WROWS = 32 rows (two m16 tiles), so every B fragment read from shared memory feeds
// four mma: shared-memory bandwidth, not the tensor cores, is what limits mma.sync kernels at 16 rows.
#define WROWS 32
#define BROWS (4 * WROWS)      // rows per block

// grid (ceil(T/128), B*NH), 128 threads; the longest query blocks (last in time) start first.
// Shared: four 64-row tiles: Q (128 rows) in tiles 2-3 at first, then K | V double-buffered.
extern "C" __global__ void __launch_bounds__(128) attention_forward_kernel2(floatX* out, float* lse, const floatX* qkv,
                                                                          int B, int T, int NH) {
    __shared__ __align__(16) floatX tiles[4][TILE * LDS];
    const int C = NH * HS, C3 = 3 * C;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BROWS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const int w0 = q0 + warp * WROWS;                              // this warp's first query row
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    load_tile(tiles[2], q, q0, T, C3);
    load_tile(tiles[3], q, q0 + TILE, T, C3);
    load_tile(tiles[0], q + C, 0, T, C3);
    load_tile(tiles[1], q + 2 * C, 0, T, C3);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[2][HS / 16][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) ldsm_a(qf[m][kk], tiles[2], warp * WROWS + m * 16, kk * 16);
    __syncthreads();                                              // tiles 2, 3 are free for keys now
    const float sl2 = LOG2E / sqrtf((float)HS);                   // scores in base-2 units
    float o[2][HS / 8][4], mr[2][2], lr[2][2];                    // [m tile][rows g, g+8]
    #pragma unroll
    for (int m = 0; m < 2; m++) {
        #pragma unroll
        for (int n = 0; n < HS / 8; n++) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
        mr[m][0] = mr[m][1] = -INFINITY;
        lr[m][0] = lr[m][1] = 0.0f;
    }
    const int nkt = min(q0 + BROWS - 1, T - 1) / TILE + 1;        // key tiles this block sees
    for (int kt = 0; kt < nkt; kt++) {
        const int cur = kt & 1;
        if (kt + 1 < nkt) {
            load_tile(tiles[2 * (cur ^ 1)], q + C, (kt + 1) * TILE, T, C3);
            load_tile(tiles[2 * (cur ^ 1) + 1], q + 2 * C, (kt + 1) * TILE, T, C3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* ks = tiles[2 * cur];
        const floatX* vs = tiles[2 * cur + 1];
        if (kt * TILE <= w0 + WROWS - 1) {                        // some key here is visible to this warp
            float s[2][TILE / 8][4];
            #pragma unroll
            for (int m = 0; m < 2; m++)
                #pragma unroll
                for (int n = 0; n < TILE / 8; n++) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < HS / 16; kk++)
                #pragma unroll
                for (int n2 = 0; n2 < TILE / 16; n2++) {
                    unsigned kb[4];
                    ldsm_b(kb, ks, n2 * 16, kk * 16);
                    #pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mma16816(s[m][2 * n2], qf[m][kk], kb[0], kb[1]);
                        mma16816(s[m][2 * n2 + 1], qf[m][kk], kb[2], kb[3]);
                    }
                }
            const bool edge = (kt + 1) * TILE - 1 > w0 || (kt + 1) * TILE > T;   // any key masked for this warp
            #pragma unroll
            for (int m = 0; m < 2; m++) {
                float mx0 = mr[m][0], mx1 = mr[m][1];
                #pragma unroll
                for (int n = 0; n < TILE / 8; n++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = kt * TILE + n * 8 + 2 * tig + (e & 1);
                        const int row = w0 + m * 16 + g + (e < 2 ? 0 : 8);
                        const float x = (!edge || (key <= row && key < T)) ? s[m][n][e] * sl2 : -INFINITY;
                        s[m][n][e] = x;
                        if (e < 2) mx0 = fmaxf(mx0, x); else mx1 = fmaxf(mx1, x);
                    }
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
                // key 0 is visible to every row: after the first tile mx is finite, and exp2(-inf) = 0 once
                const float c0 = exp2f(mr[m][0] - mx0), c1 = exp2f(mr[m][1] - mx1);
                mr[m][0] = mx0;
                mr[m][1] = mx1;
                lr[m][0] *= c0;
                lr[m][1] *= c1;
                #pragma unroll
                for (int n = 0; n < TILE / 8; n++) {
                    s[m][n][0] = exp2f(s[m][n][0] - mx0);
                    s[m][n][1] = exp2f(s[m][n][1] - mx0);
                    s[m][n][2] = exp2f(s[m][n][2] - mx1);
                    s[m][n][3] = exp2f(s[m][n][3] - mx1);
                    lr[m][0] += s[m][n][0] + s[m][n][1];
                    lr[m][1] += s[m][n][2] + s[m][n][3];
                }
                #pragma unroll
                for (int n = 0; n < HS / 8; n++) {
                    o[m][n][0] *= c0;
                    o[m][n][1] *= c0;
                    o[m][n][2] *= c1;
                    o[m][n][3] *= c1;
                }
            }
            #pragma unroll
            for (int kk = 0; kk < TILE / 16; kk++) {
                unsigned pa[2][4];
                #pragma unroll
                for (int m = 0; m < 2; m++) acc_to_a(pa[m], s[m][2 * kk], s[m][2 * kk + 1]);
                #pragma unroll
                for (int n2 = 0; n2 < HS / 16; n2++) {
                    unsigned vb[4];
                    ldsm_bt(vb, vs, kk * 16, n2 * 16);
                    #pragma unroll
                    for (int m = 0; m < 2; m++) {
                        mma16816(o[m][2 * n2], pa[m], vb[0], vb[1]);
                        mma16816(o[m][2 * n2 + 1], pa[m], vb[2], vb[3]);
                    }
                }
            }
        }
        __syncthreads();                                          // done with buffer cur before it refills
    }
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            float l = lr[m][half];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int row = w0 + m * 16 + g + 8 * half;
            if (row >= T) continue;
            const float inv = 1.0f / l;
            #pragma unroll
            for (int n = 0; n < HS / 8; n++) {
                const int col = h * HS + n * 8 + 2 * tig;
                *reinterpret_cast<__nv_bfloat162*>(out + ((long long)b * T + row) * C + col) =
                    __floats2bfloat162_rn(o[m][n][2 * half] * inv, o[m][n][2 * half + 1] * inv);
            }
            if (tig == 0) lse[(long long)bh * T + row] = (mr[m][half] + log2f(l)) / LOG2E;
        }
}

// dk, dv: grid (ceil(T/128), B*NH), 128 threads; block kb owns keys kb*128.., its warps 32 keys each
// (k and v as register fragments), and walks the query tiles from its first key to the end in steps
// of 16 queries (block 0, the longest, starts first). Shared: four tiles, K (128 rows) | V (128 rows)
// at first, then Q | dO double-buffered, with lse and D.
extern "C" __global__ void __launch_bounds__(128) attention_backward_kernel4(floatX* dqkv, const floatX* dout,
                                                                           const floatX* qkv, const float* lse,
                                                                           const float* D, int B, int T, int NH) {
    __shared__ __align__(16) floatX tiles[4][TILE * LDS];
    __shared__ float ls[2][TILE], Ds[2][TILE];
    const int C = NH * HS, C3 = 3 * C;
    const int k0 = blockIdx.x * BROWS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const int w0 = k0 + warp * WROWS;                              // this warp's first key
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    const float* lse_bh = lse + (long long)bh * T;
    const float* D_bh = D + (long long)bh * T;
    load_tile(tiles[0], q + C, k0, T, C3);
    load_tile(tiles[1], q + C, k0 + TILE, T, C3);
    load_tile(tiles[2], q + 2 * C, k0, T, C3);
    load_tile(tiles[3], q + 2 * C, k0 + TILE, T, C3);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    unsigned kf[2][HS / 16][4], vf[2][HS / 16][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) {
            ldsm_a(kf[m][kk], tiles[0], warp * WROWS + m * 16, kk * 16);
            ldsm_a(vf[m][kk], tiles[2], warp * WROWS + m * 16, kk * 16);
        }
    __syncthreads();                                              // all four tiles are free for queries now
    const int qt0 = k0 / TILE, ntiles = (T + TILE - 1) / TILE;    // queries before k0 see none of these keys
    load_tile(tiles[0], q, qt0 * TILE, T, C3);
    load_tile(tiles[1], dO, qt0 * TILE, T, C);
    load_stat(ls[0], lse_bh, qt0 * TILE, T);
    load_stat(Ds[0], D_bh, qt0 * TILE, T);
    cp_async_commit();
    const float sl2 = LOG2E / sqrtf((float)HS);
    float dk[2][HS / 8][4], dv[2][HS / 8][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int n = 0; n < HS / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) dk[m][n][e] = dv[m][n][e] = 0.0f;
    for (int qt = qt0; qt < ntiles; qt++) {
        const int cur = (qt - qt0) & 1;
        if (qt + 1 < ntiles) {
            load_tile(tiles[2 * (cur ^ 1)], q, (qt + 1) * TILE, T, C3);
            load_tile(tiles[2 * (cur ^ 1) + 1], dO, (qt + 1) * TILE, T, C);
            load_stat(ls[cur ^ 1], lse_bh, (qt + 1) * TILE, T);
            load_stat(Ds[cur ^ 1], D_bh, (qt + 1) * TILE, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* qs = tiles[2 * cur];
        const floatX* dos = tiles[2 * cur + 1];
        #pragma unroll
        for (int n2 = 0; n2 < TILE / 16; n2++) {                 // 16 queries at a time
            const int i0 = qt * TILE + n2 * 16;
            if (i0 + 15 < w0) continue;                           // all before this warp's keys: nothing visible
            float st[2][2][4], dpt[2][2][4];                      // S^T, dP^T: rows keys, columns queries
            #pragma unroll
            for (int m = 0; m < 2; m++)
                #pragma unroll
                for (int n = 0; n < 2; n++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) st[m][n][e] = dpt[m][n][e] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                unsigned qb[4], db[4];
                ldsm_b(qb, qs, n2 * 16, kk * 16);
                ldsm_b(db, dos, n2 * 16, kk * 16);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(st[m][0], kf[m][kk], qb[0], qb[1]);
                    mma16816(st[m][1], kf[m][kk], qb[2], qb[3]);
                    mma16816(dpt[m][0], vf[m][kk], db[0], db[1]);
                    mma16816(dpt[m][1], vf[m][kk], db[2], db[3]);
                }
            }
            const bool edge = i0 < w0 + WROWS - 1 || i0 + 16 > T || w0 + WROWS > T;
            #pragma unroll
            for (int m = 0; m < 2; m++)
                #pragma unroll
                for (int n = 0; n < 2; n++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int il = n2 * 16 + n * 8 + 2 * tig + (e & 1), i = qt * TILE + il;
                        const int j = w0 + m * 16 + g + (e < 2 ? 0 : 8);
                        const bool visible = !edge || (i >= j && i < T && j < T);
                        const float p = visible ? exp2f(st[m][n][e] * sl2 - ls[cur][il] * LOG2E) : 0.0f;
                        st[m][n][e] = p;
                        dpt[m][n][e] = p * (dpt[m][n][e] - Ds[cur][il]);
                    }
            unsigned pa[2][4], da[2][4];
            #pragma unroll
            for (int m = 0; m < 2; m++) {
                acc_to_a(pa[m], st[m][0], st[m][1]);
                acc_to_a(da[m], dpt[m][0], dpt[m][1]);
            }
            #pragma unroll
            for (int n2h = 0; n2h < HS / 16; n2h++) {
                unsigned ob[4], qb[4];
                ldsm_bt(ob, dos, n2 * 16, n2h * 16);
                ldsm_bt(qb, qs, n2 * 16, n2h * 16);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(dv[m][2 * n2h], pa[m], ob[0], ob[1]);
                    mma16816(dv[m][2 * n2h + 1], pa[m], ob[2], ob[3]);
                    mma16816(dk[m][2 * n2h], da[m], qb[0], qb[1]);
                    mma16816(dk[m][2 * n2h + 1], da[m], qb[2], qb[3]);
                }
            }
        }
        __syncthreads();
    }
    const float scale = 1.0f / sqrtf((float)HS);
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            const int j = w0 + m * 16 + g + 8 * half;
            if (j >= T) continue;
            floatX* gr = dqkv + ((long long)b * T + j) * C3 + h * HS;
            #pragma unroll
            for (int n = 0; n < HS / 8; n++) {
                const int col = n * 8 + 2 * tig;
                *reinterpret_cast<__nv_bfloat162*>(gr + C + col) =
                    __floats2bfloat162_rn(dk[m][n][2 * half] * scale, dk[m][n][2 * half + 1] * scale);
                *reinterpret_cast<__nv_bfloat162*>(gr + 2 * C + col) =
                    __floats2bfloat162_rn(dv[m][n][2 * half], dv[m][n][2 * half + 1]);
            }
        }
}

// dq: grid (ceil(T/128), B*NH), 128 threads; block owns 128 queries (32 per warp; q and dout as
// register fragments) and walks the key tiles up to the diagonal in steps of 16 keys (longest first).
// Shared: four tiles, Q (128 rows) | dO (128 rows) at first, then K | V double-buffered.
extern "C" __global__ void __launch_bounds__(128) attention_backward_kernel5(floatX* dqkv, const floatX* dout,
                                                                           const floatX* qkv, const float* lse,
                                                                           const float* D, int B, int T, int NH) {
    __shared__ __align__(16) floatX tiles[4][TILE * LDS];
    const int C = NH * HS, C3 = 3 * C;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BROWS;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const int w0 = q0 + warp * WROWS;                              // this warp's first query
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    load_tile(tiles[0], q, q0, T, C3);
    load_tile(tiles[1], q, q0 + TILE, T, C3);
    load_tile(tiles[2], dO, q0, T, C);
    load_tile(tiles[3], dO, q0 + TILE, T, C);
    cp_async_commit();
    float lr[2][2], Dr[2][2];                                      // [m tile][rows g, g+8]
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = w0 + m * 16 + g + 8 * half;
            lr[m][half] = row < T ? lse[(long long)bh * T + row] * LOG2E : 0.0f;
            Dr[m][half] = row < T ? D[(long long)bh * T + row] : 0.0f;
        }
    cp_async_wait<0>();
    __syncthreads();
    unsigned qf[2][HS / 16][4], df[2][HS / 16][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) {
            ldsm_a(qf[m][kk], tiles[0], warp * WROWS + m * 16, kk * 16);
            ldsm_a(df[m][kk], tiles[2], warp * WROWS + m * 16, kk * 16);
        }
    __syncthreads();                                              // all four tiles are free for keys now
    const int nkt = min(q0 + BROWS - 1, T - 1) / TILE + 1;
    load_tile(tiles[0], q + C, 0, T, C3);
    load_tile(tiles[1], q + 2 * C, 0, T, C3);
    cp_async_commit();
    const float sl2 = LOG2E / sqrtf((float)HS);
    float dq[2][HS / 8][4];
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int n = 0; n < HS / 8; n++) dq[m][n][0] = dq[m][n][1] = dq[m][n][2] = dq[m][n][3] = 0.0f;
    for (int kt = 0; kt < nkt; kt++) {
        const int cur = kt & 1;
        if (kt + 1 < nkt) {
            load_tile(tiles[2 * (cur ^ 1)], q + C, (kt + 1) * TILE, T, C3);
            load_tile(tiles[2 * (cur ^ 1) + 1], q + 2 * C, (kt + 1) * TILE, T, C3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* ks = tiles[2 * cur];
        const floatX* vs = tiles[2 * cur + 1];
        #pragma unroll
        for (int n2 = 0; n2 < TILE / 16; n2++) {                 // 16 keys at a time
            const int j0 = kt * TILE + n2 * 16;
            if (j0 > w0 + WROWS - 1) continue;                    // all after this warp's queries
            float s[2][2][4], dp[2][2][4];
            #pragma unroll
            for (int m = 0; m < 2; m++)
                #pragma unroll
                for (int n = 0; n < 2; n++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) s[m][n][e] = dp[m][n][e] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                unsigned kb[4], vb[4];
                ldsm_b(kb, ks, n2 * 16, kk * 16);
                ldsm_b(vb, vs, n2 * 16, kk * 16);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(s[m][0], qf[m][kk], kb[0], kb[1]);
                    mma16816(s[m][1], qf[m][kk], kb[2], kb[3]);
                    mma16816(dp[m][0], df[m][kk], vb[0], vb[1]);
                    mma16816(dp[m][1], df[m][kk], vb[2], vb[3]);
                }
            }
            const bool edge = j0 + 15 > w0 || j0 + 16 > T || w0 + WROWS > T;
            #pragma unroll
            for (int m = 0; m < 2; m++)
                #pragma unroll
                for (int n = 0; n < 2; n++)
                    #pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = j0 + n * 8 + 2 * tig + (e & 1);
                        const int half = e < 2 ? 0 : 1;
                        const int row = w0 + m * 16 + g + 8 * half;
                        const bool visible = !edge || (key <= row && key < T && row < T);
                        const float p = visible ? exp2f(s[m][n][e] * sl2 - lr[m][half]) : 0.0f;
                        s[m][n][e] = p * (dp[m][n][e] - Dr[m][half]);          // dS (unscaled)
                    }
            unsigned da[2][4];
            #pragma unroll
            for (int m = 0; m < 2; m++) acc_to_a(da[m], s[m][0], s[m][1]);
            #pragma unroll
            for (int n2h = 0; n2h < HS / 16; n2h++) {
                unsigned kb[4];
                ldsm_bt(kb, ks, n2 * 16, n2h * 16);
                #pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(dq[m][2 * n2h], da[m], kb[0], kb[1]);
                    mma16816(dq[m][2 * n2h + 1], da[m], kb[2], kb[3]);
                }
            }
        }
        __syncthreads();
    }
    const float scale = 1.0f / sqrtf((float)HS);
    #pragma unroll
    for (int m = 0; m < 2; m++)
        #pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = w0 + m * 16 + g + 8 * half;
            if (row >= T) continue;
            #pragma unroll
            for (int n = 0; n < HS / 8; n++) {
                const int col = h * HS + n * 8 + 2 * tig;
                *reinterpret_cast<__nv_bfloat162*>(dqkv + ((long long)b * T + row) * C3 + col) =
                    __floats2bfloat162_rn(dq[m][n][2 * half] * scale, dq[m][n][2 * half + 1] * scale);
            }
        }
}
#endif
