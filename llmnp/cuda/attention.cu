// Causal multi-head self-attention, flash-attention style (llmnp/attention.py is the reference).
//
// forward:  out = softmax(q k^T / sqrt(HS), causal) v per head, and lse (B,NH,T) float, the log-sum-exp
//           of each softmax row. Online softmax over key tiles: no (T,T) buffer is ever written.
// backward: D = rowsum(dout * out) (B,NH,T) float (attention_backward_rowdot), then the probabilities
//           are recomputed from q, k and lse: dv = P^T dout, dP = dout v^T, dS = P (dP - D) / sqrt(HS),
//           dk = dS^T q, dq = dS k. dqkv is overwritten. The tensor-core backwards can also sum the rows of
//           dqkv as they store them, in partial rows that attention_backward_dbias adds into the qkv
//           projection's bias gradient (deterministic: no atomics).
// Two implementations, named by what they run on:
// - *_fp32: fp32 arithmetic on CUDA cores, any HS up to 128, fp32 or bf16 storage (the fp32 path, and the
//   reference for the other): attention_forward_fp32; attention_backward_dkdv_fp32 (one pass per key
//   tile) and attention_backward_dq_fp32 (one pass per query tile), so nothing is accumulated with atomics.
// - *_mma: bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation) for HS a multiple of 16 up to 128
//   (GPT-2's 64; GPT-3's 64, 80, 96 and 128): attention_forward_mma; attention_backward_mma, one pass per
//   key tile that also adds each tile's share of dq into a float buffer with atomics, then
//   attention_backward_dq_store (dev/cuda/attention_split.cu keeps the two-kernel form, and the README
//   there the times of both).
// attention_backward_rowdot serves both.
// Shapes: B batch, T time, NH heads, HS head size (a -D constant), C = NH*HS; qkv (B,T,3C) = Q | K | V
// blocks of C; head h holds channels h*HS..(h+1)*HS of each; out, dout (B,T,C).
#include "common.cuh"

// ------------------------------------------------------------------------------------------------------
// CUDA-core kernels: one thread per query (forward, dq) or per key (dk/dv), the other side in shared tiles

#define ROWS1 64    // threads per block, one row each
#define TILE1 32    // rows of the other operand per shared-memory tile

extern "C" __global__ void attention_forward_fp32(floatX* out, float* lse, const floatX* qkv, int B, int T, int NH) {
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

// D[b,h,t] = sum_d dout[b,t,h,d] * out[b,t,h,d], D's rows `pitch` >= T floats apart; `lanes` threads per
// (b, t, h) row: one 16-byte pack each when HS is a whole number of packs that divides a warp, else a warp
// striding over the row. dq_acc (dq_size floats), when not null, is zeroed on the way (the tensor-core
// backwards add into it); lse_copy, when not null, <- lse (B,NH,T) in rows of the same pitch as D.
extern "C" __global__ void attention_backward_rowdot(float* D, float* dq_acc, long long dq_size, float* lse_copy,
                                                     const float* lse, const floatX* dout, const floatX* out,
                                                     int B, int T, int NH, int pitch) {
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
    if (dq_acc != nullptr)
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < dq_size;
             i += (long long)gridDim.x * blockDim.x)
            dq_acc[i] = 0.0f;
    for (int offset = lanes / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (sub == 0 && row < rows) {
        const int h = (int)(row % NH);
        const long long bt = row / NH, bh = bt / T * NH + h;
        D[bh * pitch + bt % T] = sum;
        if (lse_copy != nullptr) lse_copy[bh * pitch + bt % T] = lse[bh * T + bt % T];
    }
}

// dk, dv: one thread per key; its k and v rows in shared memory (padded rows: no bank conflicts),
// query tiles (q, dout, lse, D) shared. Dynamic shared memory, floats:
// 2*ROWS1*(HS+1) + 2*TILE1*HS + 2*TILE1
extern "C" __global__ void attention_backward_dkdv_fp32(floatX* dqkv, const floatX* dout, const floatX* qkv,
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
extern "C" __global__ void attention_backward_dq_fp32(floatX* dqkv, const floatX* dout, const floatX* qkv,
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
// Tensor-core kernels (bf16): 4 warps per block, each warp owns 16 rows of a 64-row tile; the other
// operand streams through shared memory in 64-row tiles, double-buffered with cp.async (the next tile
// loads while this one is computed). Fragments follow the PTX ISA layout of mma.m16n8k16: lane =
// 4 g + tig; an fp32 accumulator tile (16 x 8) holds rows g and g+8, columns 2 tig and 2 tig + 1. Two
// accumulator tiles side by side are exactly the A operand of the next mma.

#if LLMNP_BF16 && HS % 16 == 0 && HS <= 128
#define TILE 64            // rows per block and per shared tile
#define LDS (HS + 8)       // shared row pitch (bf16): 16-byte aligned rows, ldmatrix without bank conflicts
#define AT(tiles, i) ((tiles) + (i) * TILE * LDS)   // shared tile i of a run of tiles
// Shared memory is dynamic (the launcher sets its size: 87 KB for five tiles at HS = 128, past the
// 48 KB a static array may take): forward 5 tiles (Q, K x2, V x2); backward 6 tiles, dS^T and 4 TILE floats.
extern __shared__ __align__(16) floatX smem16[];

// A operand (16 x 16, row-major) at rows r0.., columns c0.. of a shared tile
__device__ __forceinline__ void ldsm_a(unsigned (&a)[4], const floatX* tile, int r0, int c0, int pitch = LDS) {
    const int lane = threadIdx.x % 32;
    const floatX* p = tile + (r0 + lane % 16) * pitch + c0 + (lane / 16) * 8;
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

// A operand (16 x 16) at rows m0.., columns k0.. of A, where A[m][k] = tile[k][m] (e.g. dS from dS^T)
__device__ __forceinline__ void ldsm_at(unsigned (&a)[4], const floatX* tile, int m0, int k0, int pitch) {
    const int lane = threadIdx.x % 32;
    const floatX* p = tile + (k0 + (lane / 16) * 8 + lane % 8) * pitch + m0 + ((lane / 8) % 2) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(smem_u32(p)) : "memory");
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

// p[0..3] += v in global memory, p 16-byte aligned (one vector reduction on Hopper, four scalar ones before)
__device__ __forceinline__ void atomic_add4(float* p, float4 v) {
#if __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float4*>(p), v);
#else
    atomicAdd(p, v.x);
    atomicAdd(p + 1, v.y);
    atomicAdd(p + 2, v.z);
    atomicAdd(p + 3, v.w);
#endif
}

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

// One key tile of the forward's online softmax, for this thread's rows r0 and r0 + 8 of a 16-row
// accumulator tile s (scores q k^T; column n*8 + 2 tig + (e & 1) is key key0 + that): the scores masked
// past the diagonal and T when `edge`, the running max m (of the scores scaled to base 2: s log2(e) /
// sqrt(HS)) and sum l of each row updated, and s turned into exp2(scaled s - m) (the tile's P, one fused
// multiply-add and one exponential per score); c, the factor the output accumulator must be rescaled by
// to the new max (softmax_tile does it at once; the Hopper forward once its last P V product is done).
__device__ __forceinline__ void softmax_scores(float (&s)[TILE / 8][4], float (&m)[2], float (&l)[2], float (&c)[2],
                                               int key0, int r0, bool edge, int T) {
    const int tig = threadIdx.x % 4;
    const float sl2 = LOG2E / sqrtf((float)HS);
    if (edge)
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) {
                const int key = key0 + n * 8 + 2 * tig + (e & 1), row = r0 + (e / 2) * 8;
                if (!(key <= row && key < T)) s[n][e] = -INFINITY;
            }
    float mx[2] = {-INFINITY, -INFINITY};                   // the tile's raw maxima (the scale is positive)
    for (int n = 0; n < TILE / 8; n++)
        for (int e = 0; e < 4; e++) mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        mx[i] = fmaxf(m[i], mx[i] * sl2);
    }
    // key 0 is visible to every row, so after the first tile mx is finite and exp2(-inf) = 0 once
    for (int i = 0; i < 2; i++) {
        c[i] = exp2_ftz(m[i] - mx[i]);
        m[i] = mx[i];
        l[i] *= c[i];
    }
    for (int n = 0; n < TILE / 8; n++)
        for (int e = 0; e < 4; e++) {
            s[n][e] = exp2_ftz(fmaf(s[n][e], sl2, -m[e / 2]));
            l[e / 2] += s[n][e];
        }
}

__device__ __forceinline__ void softmax_tile(float (&s)[TILE / 8][4], float (&o)[HS / 8][4], float (&m)[2], float (&l)[2],
                                             int key0, int r0, bool edge, int T) {
    float c[2];
    softmax_scores(s, m, l, c, key0, r0, edge, T);
    for (int n = 0; n < HS / 8; n++)
        for (int e = 0; e < 4; e++) o[n][e] *= c[e / 2];
}

// The forward's end for this thread's rows r0 and r0 + 8 of batch b, head h: out = o / l (bf16), and
// lse = the natural log-sum-exp (m and l are in base 2), rows at or past T left alone.
__device__ __forceinline__ void store_forward(floatX* out, float* lse, const float (&o)[HS / 8][4], const float (&m)[2],
                                              float (&l)[2], int b, int h, int NH, int r0, int T) {
    const int tig = threadIdx.x % 4, C = NH * HS;
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
    for (int i = 0; i < 2; i++) {
        const int row = r0 + 8 * i;
        if (row >= T) continue;
        const float inv = 1.0f / l[i];
        for (int n = 0; n < HS / 8; n++)
            *reinterpret_cast<__nv_bfloat162*>(out + ((long long)b * T + row) * C + h * HS + n * 8 + 2 * tig) =
                __floats2bfloat162_rn(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        if (tig == 0) lse[((long long)b * NH + h) * T + row] = (m[i] + log2f(l[i])) / LOG2E;
    }
}

// The backwards' end for this thread's keys j0 and j0 + 8 (rows of a 16-row accumulator tile) of batch b,
// head h: dk / sqrt(HS) and dv into dqkv's k and v parts (bf16), keys at or past T left alone. Unless
// dbias_kv is null, the column sums of what this warp stored (its 16 keys, from key0 = j0 - g) go to row
// b * ceil(T/16) + key0 / 16 of dbias_kv (B * ceil(T/16), 2C) float, k | v columns: partial sums of the
// qkv projection's bias gradient, which attention_backward_dbias adds up.
__device__ __forceinline__ void store_dkdv(floatX* dqkv, float* dbias_kv, const float (&dk)[HS / 8][4],
                                           const float (&dv)[HS / 8][4], int b, int h, int NH, int j0, int T) {
    const int tig = threadIdx.x % 4, C = NH * HS, C3 = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    const int key0 = j0 - threadIdx.x % 32 / 4;                   // the warp's first key (a multiple of 16)
    float* partial = dbias_kv + ((long long)b * ((T + 15) / 16) + key0 / 16) * 2 * C;
    for (int n = 0; n < HS / 8; n++) {
        const int col = h * HS + n * 8 + 2 * tig;
        float2 ksum = make_float2(0.0f, 0.0f), vsum = make_float2(0.0f, 0.0f);
        for (int e = 0; e < 2; e++) {                             // keys j0 and j0 + 8
            const int j = j0 + 8 * e;
            if (j >= T) continue;
            const __nv_bfloat162 kb = __floats2bfloat162_rn(dk[n][2 * e] * scale, dk[n][2 * e + 1] * scale);
            const __nv_bfloat162 vb = __floats2bfloat162_rn(dv[n][2 * e], dv[n][2 * e + 1]);
            floatX* gr = dqkv + ((long long)b * T + j) * C3 + col;
            *reinterpret_cast<__nv_bfloat162*>(gr + C) = kb;
            *reinterpret_cast<__nv_bfloat162*>(gr + 2 * C) = vb;
            const float2 kf = __bfloat1622float2(kb), vf = __bfloat1622float2(vb);
            ksum.x += kf.x, ksum.y += kf.y, vsum.x += vf.x, vsum.y += vf.y;
        }
        if (dbias_kv == nullptr) continue;
        for (int o = 4; o < 32; o *= 2) {                         // over the warp's 8 row pairs (lanes 4 g + tig)
            ksum.x += __shfl_xor_sync(0xffffffffu, ksum.x, o);
            ksum.y += __shfl_xor_sync(0xffffffffu, ksum.y, o);
            vsum.x += __shfl_xor_sync(0xffffffffu, vsum.x, o);
            vsum.y += __shfl_xor_sync(0xffffffffu, vsum.y, o);
        }
        if (threadIdx.x % 32 < 4 && key0 < T) {
            *reinterpret_cast<float2*>(partial + col) = ksum;
            *reinterpret_cast<float2*>(partial + C + col) = vsum;
        }
    }
}

// grid (ceil(T/64), B*NH), 128 threads; the longest query tiles (last in time) start first.
// Shared: Q, then K/V double-buffered.
extern "C" __global__ void __launch_bounds__(128) attention_forward_mma(floatX* out, float* lse, const floatX* qkv,
                                                                          int B, int T, int NH) {
    floatX* qs = smem16;                                          // [TILE * LDS]
    floatX* ks = AT(smem16, 1);                                   // 2 tiles, double-buffered
    floatX* vs = AT(smem16, 3);                                   // 2 tiles
    const int C = NH * HS, C3 = 3 * C;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    load_tile(qs, q, qt * TILE, T, C3);
    load_tile(AT(ks, 0), q + C, 0, T, C3);
    load_tile(AT(vs, 0), q + 2 * C, 0, T, C3);
    cp_async_commit();
    unsigned qf[HS / 16][4];
    const int r0 = qt * TILE + warp * 16 + g;                     // this thread's query rows: r0, r0 + 8
    float o[HS / 8][4];
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};    // rows r0, r0 + 8: running max (base 2), sum
    for (int kt = 0; kt <= qt; kt++) {
        const int cur = kt & 1;
        if (kt < qt) {
            load_tile(AT(ks, cur ^ 1), q + C, (kt + 1) * TILE, T, C3);
            load_tile(AT(vs, cur ^ 1), q + 2 * C, (kt + 1) * TILE, T, C3);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();                                          // tile kt (and Q) are in for everyone
        if (kt == 0)
            for (int kk = 0; kk < HS / 16; kk++) ldsm_a(qf[kk], qs, warp * 16, kk * 16);
        float s[TILE / 8][4];
        for (int n = 0; n < TILE / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        for (int kk = 0; kk < HS / 16; kk++)
            for (int n2 = 0; n2 < TILE / 16; n2++) {
                unsigned kb[4];
                ldsm_b(kb, AT(ks, cur), n2 * 16, kk * 16);
                mma16816(s[2 * n2], qf[kk], kb[0], kb[1]);
                mma16816(s[2 * n2 + 1], qf[kk], kb[2], kb[3]);
            }
        softmax_tile(s, o, m, l, kt * TILE, r0, kt == qt || (kt + 1) * TILE > T, T);   // only the diagonal and last tiles mask
        for (int kk = 0; kk < TILE / 16; kk++) {
            unsigned pa[4];
            acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            for (int n2 = 0; n2 < HS / 16; n2++) {
                unsigned vb[4];
                ldsm_bt(vb, AT(vs, cur), kk * 16, n2 * 16);
                mma16816(o[2 * n2], pa, vb[0], vb[1]);
                mma16816(o[2 * n2 + 1], pa, vb[2], vb[3]);
            }
        }
        __syncthreads();                                          // done with buffer cur before it refills
    }
    store_forward(out, lse, o, m, l, b, h, NH, r0, T);
}

// dk, dv and dq in one pass (flash-attention-2's order): grid (ceil(T/64), B*NH), 128 threads; block kt
// owns keys kt*64.. (16 per warp) and walks the query tiles from the diagonal to the end (block 0, the
// longest, starts first), accumulating dk and dv in registers. Each query tile's dS also gives its
// share of dq: dS^T goes to shared memory, then each warp multiplies 16 of the tile's query rows by the
// block's keys, dq (16 x HS) = dS (16 x 64) k (64 x HS), and adds that into dq_acc (B,T,C) float
// (zeroed by attention_backward_rowdot) with atomics, since every key tile up to a query tile adds to
// it; attention_backward_dq_store then writes dq_acc / sqrt(HS) into dqkv. Shared: Q | dO
// double-buffered (4 tiles), K, V, dS^T (64 x 64 at pitch TILE + 8), the lse and D of two query tiles.
#define LDSS (TILE + 8)
// blocks per SM the registers are budgeted for: three at GPT-2's head size (168 registers, no spills),
// two above it (dev/cuda/variants.py times the other choice)
#ifndef BWD_BLOCKS
#define BWD_BLOCKS (HS <= 64 ? 3 : 2)
#endif
extern "C" __global__ void __launch_bounds__(128, BWD_BLOCKS)
attention_backward_mma(floatX* dqkv, float* dq_acc, float* dbias_kv, const floatX* dout, const floatX* qkv,
                       const float* lse, const float* D, int B, int T, int NH) {
    floatX* tiles = smem16;                                       // 4 tiles: [2 cur]: Q, [2 cur + 1]: dO
    floatX* ks = AT(tiles, 4);                                    // this block's keys
    floatX* vs = AT(tiles, 5);                                    // and values
    floatX* dst = AT(tiles, 6);                                   // dS^T [key][query], pitch LDSS
    float* ls = reinterpret_cast<float*>(dst + TILE * LDSS);      // [2][TILE]
    float* Ds = ls + 2 * TILE;                                    // [2][TILE]
    const int C = NH * HS, C3 = 3 * C;
    const int kt = blockIdx.x;
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
    const floatX* q = qkv + (long long)b * T * C3 + h * HS;
    const floatX* dO = dout + (long long)b * T * C + h * HS;
    const float* lse_bh = lse + (long long)bh * T;
    const float* D_bh = D + (long long)bh * T;
    load_tile(ks, q + C, kt * TILE, T, C3);
    load_tile(vs, q + 2 * C, kt * TILE, T, C3);
    load_tile(AT(tiles, 0), q, kt * TILE, T, C3);                     // the first query tile (the diagonal)
    load_tile(AT(tiles, 1), dO, kt * TILE, T, C);
    load_stat(ls, lse_bh, kt * TILE, T);
    load_stat(Ds, D_bh, kt * TILE, T);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int jl0 = warp * 16 + g, jl1 = jl0 + 8;                // this thread's two keys, in the tile
    const int j0 = kt * TILE + jl0, j1 = kt * TILE + jl1;
    const float sl2 = LOG2E / sqrtf((float)HS);
    float dk[HS / 8][4], dv[HS / 8][4];
    for (int n = 0; n < HS / 8; n++)
        for (int e = 0; e < 4; e++) dk[n][e] = dv[n][e] = 0.0f;
    const int ntiles = (T + TILE - 1) / TILE;
    for (int qt = kt; qt < ntiles; qt++) {
        const int cur = (qt - kt) & 1;
        if (qt + 1 < ntiles) {
            load_tile(AT(tiles, 2 * (cur ^ 1)), q, (qt + 1) * TILE, T, C3);
            load_tile(AT(tiles, 2 * (cur ^ 1) + 1), dO, (qt + 1) * TILE, T, C);
            load_stat((ls + (cur ^ 1) * TILE), lse_bh, (qt + 1) * TILE, T);
            load_stat((Ds + (cur ^ 1) * TILE), D_bh, (qt + 1) * TILE, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const floatX* qs = AT(tiles, 2 * cur);
        const floatX* dos = AT(tiles, 2 * cur + 1);
        float st[TILE / 8][4], dpt[TILE / 8][4];        // S^T and dP^T: rows keys, columns queries
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) st[n][e] = dpt[n][e] = 0.0f;
        for (int kk = 0; kk < HS / 16; kk++) {
            unsigned kf[4], vf[4];                                // read each time: fewer registers
            ldsm_a(kf, ks, warp * 16, kk * 16);
            ldsm_a(vf, vs, warp * 16, kk * 16);
            for (int n2 = 0; n2 < TILE / 16; n2++) {
                unsigned qb[4], db[4];
                ldsm_b(qb, qs, n2 * 16, kk * 16);
                mma16816(st[2 * n2], kf, qb[0], qb[1]);
                mma16816(st[2 * n2 + 1], kf, qb[2], qb[3]);
                ldsm_b(db, dos, n2 * 16, kk * 16);
                mma16816(dpt[2 * n2], vf, db[0], db[1]);
                mma16816(dpt[2 * n2 + 1], vf, db[2], db[3]);
            }
        }
        const bool edge = qt == kt || (qt + 1) * TILE > T;
        for (int n = 0; n < TILE / 8; n++)
            for (int e = 0; e < 4; e++) {
                const int il = n * 8 + 2 * tig + (e & 1), i = qt * TILE + il;
                const int j = e < 2 ? j0 : j1;
                const bool visible = !edge || (i >= j && i < T && j < T);
                const float p = visible ? exp2_ftz(fmaf(st[n][e], sl2, -ls[cur * TILE + il] * LOG2E)) : 0.0f;
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - Ds[cur * TILE + il]);
            }
        for (int n = 0; n < TILE / 8; n++) {                      // dS^T, rounded to bf16 as the mma uses it
            const int il = n * 8 + 2 * tig;
            *reinterpret_cast<unsigned*>(dst + jl0 * LDSS + il) = pack_bf16(dpt[n][0], dpt[n][1]);
            *reinterpret_cast<unsigned*>(dst + jl1 * LDSS + il) = pack_bf16(dpt[n][2], dpt[n][3]);
        }
        for (int kk = 0; kk < TILE / 16; kk++) {
            unsigned pa[4], da[4];
            acc_to_a(pa, st[2 * kk], st[2 * kk + 1]);
            acc_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
            for (int n2 = 0; n2 < HS / 16; n2++) {
                unsigned ob[4], qb[4];
                ldsm_bt(ob, dos, kk * 16, n2 * 16);
                mma16816(dv[2 * n2], pa, ob[0], ob[1]);
                mma16816(dv[2 * n2 + 1], pa, ob[2], ob[3]);
                ldsm_bt(qb, qs, kk * 16, n2 * 16);
                mma16816(dk[2 * n2], da, qb[0], qb[1]);
                mma16816(dk[2 * n2 + 1], da, qb[2], qb[3]);
            }
        }
        __syncthreads();                                          // dS^T complete
        float dq[HS / 8][4];                                      // rows: queries warp*16 + g (+ 8)
        for (int n = 0; n < HS / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
        for (int kk = 0; kk < TILE / 16; kk++) {
            unsigned da[4];
            ldsm_at(da, dst, warp * 16, kk * 16, LDSS);
            for (int n2 = 0; n2 < HS / 16; n2++) {
                unsigned kb[4];
                ldsm_bt(kb, ks, kk * 16, n2 * 16);
                mma16816(dq[2 * n2], da, kb[0], kb[1]);
                mma16816(dq[2 * n2 + 1], da, kb[2], kb[3]);
            }
        }
        // dq goes through shared memory (over this tile's Q and dO, read by now), so that the adds into
        // dq_acc are whole 16-byte packs of consecutive columns: fewer, fuller atomic transactions
        float* dqs = reinterpret_cast<float*>(AT(tiles, 2 * cur));   // [TILE][HS + 8] float: fits two tiles
        for (int n = 0; n < HS / 8; n++) {
            const int col = n * 8 + 2 * tig;
            *reinterpret_cast<float2*>(dqs + (warp * 16 + g) * (HS + 8) + col) = make_float2(dq[n][0], dq[n][1]);
            *reinterpret_cast<float2*>(dqs + (warp * 16 + g + 8) * (HS + 8) + col) = make_float2(dq[n][2], dq[n][3]);
        }
        __syncthreads();
        for (int x = threadIdx.x; x < TILE * HS / 4; x += blockDim.x) {
            const int r = x / (HS / 4), c = x % (HS / 4) * 4, i = qt * TILE + r;
            if (i < T) atomic_add4(dq_acc + ((long long)b * T + i) * C + h * HS + c,
                                   *reinterpret_cast<const float4*>(dqs + r * (HS + 8) + c));
        }
        __syncthreads();                                          // done with Q, dO, dS^T and dq of this tile
    }
    store_dkdv(dqkv, dbias_kv, dk, dv, b, h, NH, j0, T);
}

// dqkv's q part (B,T,C of each 3C row) = dq_acc (B,T,C) / sqrt(HS) in 16-byte packs (PACK = 8 values; C
// is a multiple of 16). block (C / PACK, Y): thread x owns the pack of columns x * PACK.. in the rows it
// takes, DQ_ROWS at a time (their loads all in flight before any is used), the blocks striding over the
// B*T rows. Unless dbias_q is null, each thread keeps the column sums of what it stored and writes them
// to its row blockIdx.x * Y + y of dbias_q (gridDim.x * Y, C) float: partial sums of the q part of the
// qkv projection's bias gradient, which attention_backward_dbias adds up.
#define DQ_ROWS 4
extern "C" __global__ void attention_backward_dq_store(floatX* dqkv, float* dbias_q, const float* dq_acc, int B, int T,
                                                       int NH) {
    const int C = NH * HS, c = threadIdx.x * PACK;
    const long long N = (long long)B * T, step = (long long)blockDim.y * DQ_ROWS;
    const float scale = 1.0f / sqrtf((float)HS);
    float sum[PACK] = {};
    for (long long r0 = blockIdx.x * step + threadIdx.y; r0 < N; r0 += gridDim.x * step) {
        float4 f[DQ_ROWS][PACK / 4];                              // rows r0, r0 + Y, ...
        for (int u = 0; u < DQ_ROWS; u++)
            for (int k = 0; k < PACK / 4; k++)
                if (r0 + u * blockDim.y < N)
                    f[u][k] = *reinterpret_cast<const float4*>(dq_acc + (r0 + u * blockDim.y) * C + c + 4 * k);
        for (int u = 0; u < DQ_ROWS; u++) {
            const long long r = r0 + u * blockDim.y;
            if (r >= N) break;
            x128 v;
            for (int k = 0; k < PACK / 4; k++) {
                v.v[4 * k] = fromF(f[u][k].x * scale), v.v[4 * k + 1] = fromF(f[u][k].y * scale);
                v.v[4 * k + 2] = fromF(f[u][k].z * scale), v.v[4 * k + 3] = fromF(f[u][k].w * scale);
            }
            store128(dqkv + r * 3 * C + c, v);
            for (int k = 0; k < PACK; k++) sum[k] += toF(v.v[k]);
        }
    }
    if (dbias_q != nullptr) {
        float* row = dbias_q + ((long long)blockIdx.x * blockDim.y + threadIdx.y) * C + c;
        for (int k = 0; k < PACK; k += 4)
            *reinterpret_cast<float4*>(row + k) = make_float4(sum[k], sum[k + 1], sum[k + 2], sum[k + 3]);
    }
}

// block (32, 32), grid ceil(3C / 32): dqkv_bias (3C,) += the column sums of the partial rows: dbias_q (rq, C)
// for the q part, dbias_kv (rkv, 2C) for k and v
extern "C" __global__ void attention_backward_dbias(floatX* dqkv_bias, const float* dbias_q, int rq,
                                                    const float* dbias_kv, int rkv, int C) {
    const int col = blockIdx.x * 32 + threadIdx.x;
    const bool q = col < C;                       // one call by every thread: a block may hold both parts
    const float sum = column_sum(q ? dbias_q + col : dbias_kv + col - C, q ? rq : rkv, q ? C : 2 * C, col < 3 * C);
    if (threadIdx.y == 0 && col < 3 * C) dqkv_bias[col] = fromF(toF(dqkv_bias[col]) + sum);
}

#endif
