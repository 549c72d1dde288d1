// LayerNorm over the channels of each row, eps 1e-5, biased variance (llmnp/layernorm.py is the reference).
//
// forward:  mean, rstd (float, saved) and out = (x - mean) * rstd * w + b;  one warp per row.
// residual_layernorm (forward only): residual = inp + proj + proj_bias, stored, then the layernorm of the
//           stored residual, in one pass per row: its backward is the plain layernorm's.
// backward: dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),  dnorm = dout * w;
//           dweight += sum_rows dout * norm,  dbias += sum_rows dout. All three accumulate.
//           layernorm_backward_rows adds into dinp and leaves one partial (dweight | dbias) row per block in `partial`
//           (gridDim.x, 2C); layernorm_backward_dweight_dbias sums those rows into dweight and dbias: deterministic, no atomics.
//           Given dproj_bias, the rows of dinp as written are summed into it too (partial (gridDim.x, 3C)).
// Shapes: N rows (B*T), C channels; mean, rstd (N,) float; weight, bias (C,).
//
// residual_layernorm and the backward are memory-bound: their warps stride over the rows (one wave of
// blocks), each holding its lane's part of a row in registers, ROW_CHUNKS PACK-wide chunks (ROW_CHUNKS =
// ceil(C / (32*PACK)), a -D constant the launchers pass), so that a row's loads are all in flight before
// the first is used and every array is read or written once; and while a row is worked on, L2 is asked
// for the warp's next row (prefetch_row), which costs no registers.
#include "common.cuh"

#define LN_EPS 1e-5f
#ifndef ROW_CHUNKS
#define ROW_CHUNKS 3                   // C up to 96*PACK; the launchers pass the value their C needs
#endif

// this lane's PACK-wide chunks of a row (C,), as stored: v[i] holds columns i*32*PACK + lane*PACK..,
// zeros past C. vec (16-byte aligned, C % PACK == 0, so a chunk is all in or all out): one 16-byte load
// per chunk, all issued before any is used; else element by element.
__device__ __forceinline__ void load_row(x128 (&v)[ROW_CHUNKS], const floatX* row, int C, bool vec) {
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < ROW_CHUNKS; i++) {
        const int c = i * 32 * PACK + lane * PACK;
        if (vec && c < C) {
            v[i] = load128(row + c);
        } else {
            for (int k = 0; k < PACK; k++) v[i].v[k] = !vec && c + k < C ? row[c + k] : fromF(0.0f);
        }
    }
}

// the store to match: this lane's chunks of v into row (C,), the columns below C
__device__ __forceinline__ void store_row(floatX* row, const x128 (&v)[ROW_CHUNKS], int C, bool vec) {
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < ROW_CHUNKS; i++) {
        const int c = i * 32 * PACK + lane * PACK;
        if (vec && c < C) {
            store128(row + c, v[i]);
        } else if (!vec) {
            for (int k = 0; k < PACK && c + k < C; k++) row[c + k] = v[i].v[k];
        }
    }
}

// asks L2 for this lane's chunks of a row (C,) without waiting for them and without holding registers:
// a later load_row of that row then finds it in L2 instead of waiting on memory
__device__ __forceinline__ void prefetch_row(const floatX* row, int C) {
    const int lane = threadIdx.x % 32;
    for (int i = 0; i < ROW_CHUNKS; i++) {
        const int c = i * 32 * PACK + lane * PACK;
        if (c < C) asm volatile("prefetch.global.L2 [%0];" :: "l"(row + c));
    }
}

// the layernorm of one row x (C,) into o, by one warp, reading x three times (mean, variance, output);
// lane l reads only columns l*PACK.. of each 32*PACK-wide chunk
__device__ __forceinline__ void layernorm_row(floatX* o, float* mean, float* rstd, const floatX* x,
                                              const floatX* weight, const floatX* bias, int C, bool vec) {
    const int lane = threadIdx.x % 32;
    float sum = 0.0f;
    for (int c = lane * PACK; c < C; c += 32 * PACK) {
        float xv[PACK];
        load_floats(xv, x + c, C - c, vec);
        for (int k = 0; k < PACK; k++) sum += xv[k];
    }
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane * PACK; c < C; c += 32 * PACK) {
        float xv[PACK];
        load_floats(xv, x + c, C - c, vec);
        for (int k = 0; k < PACK && c + k < C; k++) var += (xv[k] - m) * (xv[k] - m);
    }
    const float r = 1.0f / sqrtf(warp_sum(var) / C + LN_EPS);
    for (int c = lane * PACK; c < C; c += 32 * PACK) {
        float xv[PACK], wv[PACK], bv[PACK];
        load_floats(xv, x + c, C - c, vec);
        load_floats(wv, weight + c, C - c, vec);
        load_floats(bv, bias + c, C - c, vec);
        for (int k = 0; k < PACK; k++) xv[k] = (xv[k] - m) * r * wv[k] + bv[k];
        store_floats(o + c, xv, C - c, vec);
    }
    if (lane == 0) {
        *mean = m;
        *rstd = r;
    }
}

extern "C" __global__ void layernorm_forward_kernel(floatX* out, float* mean, float* rstd, const floatX* inp,
                                                     const floatX* weight, const floatX* bias, int N, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const bool vec = C % PACK == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) && aligned16(bias);
    const long long at = (long long)row * C;
    layernorm_row(out + at, mean + row, rstd + row, inp + at, weight, bias, C, vec);
}

// the layernorm of one row held in registers (x as load_row leaves it) into o, by one warp
__device__ __forceinline__ void layernorm_row_in_registers(floatX* o, float* mean, float* rstd,
                                                           const x128 (&x)[ROW_CHUNKS], const floatX* weight,
                                                           const floatX* bias, int C, bool vec) {
    const int lane = threadIdx.x % 32;
    x128 w[ROW_CHUNKS], b[ROW_CHUNKS];
    load_row(w, weight, C, vec);
    load_row(b, bias, C, vec);
    float sum = 0.0f;
    for (int i = 0; i < ROW_CHUNKS; i++)
        for (int k = 0; k < PACK; k++) sum += toF(x[i].v[k]);
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int i = 0; i < ROW_CHUNKS; i++)
        for (int k = 0; k < PACK; k++) {
            const float xc = i * 32 * PACK + lane * PACK + k < C ? toF(x[i].v[k]) - m : 0.0f;   // past C: no column
            var += xc * xc;
        }
    const float r = 1.0f / sqrtf(warp_sum(var) / C + LN_EPS);
    x128 y[ROW_CHUNKS];
    for (int i = 0; i < ROW_CHUNKS; i++)
        for (int k = 0; k < PACK; k++) y[i].v[k] = fromF((toF(x[i].v[k]) - m) * r * toF(w[i].v[k]) + toF(b[i].v[k]));
    store_row(o, y, C, vec);
    if (lane == 0) {
        *mean = m;
        *rstd = r;
    }
}

// the end of a layernorm backward block: acc (warps x sums x CP terms, lane-minor as below: dweight, dbias
// and, when sums is 3, the projection's dbias) summed over the block's warps into its row of partial
// (sums x C, in that order)
__device__ __forceinline__ void store_dweight_dbias_partials(float* partial, const float* acc, int sums, int C,
                                                             int CP) {
    const int warps = blockDim.x / 32;
    for (int i = threadIdx.x; i < sums * C; i += blockDim.x) {
        const int part = i / C, c = i % C;                          // which sum, column c
        const int rem = c % (32 * PACK);
        const int at = part * CP + (c - rem) + (rem % PACK) * 32 + rem / PACK;
        float sum = 0.0f;
        for (int w = 0; w < warps; w++) sum += acc[w * sums * CP + at];
        partial[(long long)blockIdx.x * sums * C + i] = sum;
    }
}

// rows strided over the grid (one wave, layernorm.py), one warp per row, the row in registers: residual =
// inp + (proj + proj_bias) in fp32, rounded once to floatX and stored, then the layernorm of those stored
// values; while a row is worked on, L2 fetches the warp's next row. residual may be proj: each lane reads
// its chunks of a row of proj before it writes them.
extern "C" __global__ void residual_layernorm_forward_kernel(floatX* residual, floatX* out, float* mean, float* rstd,
                                                              const floatX* inp, const floatX* proj,
                                                              const floatX* proj_bias, const floatX* weight,
                                                              const floatX* bias, int N, int C) {
    const int warps = blockDim.x / 32, stride = gridDim.x * warps;
    const bool vec = C % PACK == 0 && aligned16(residual) && aligned16(out) && aligned16(inp) && aligned16(proj) &&
                     aligned16(proj_bias) && aligned16(weight) && aligned16(bias);
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += stride) {
        const long long at = (long long)row * C;
        x128 x[ROW_CHUNKS], p[ROW_CHUNKS], pb[ROW_CHUNKS];        // this lane's chunks of inp, proj, proj_bias
        load_row(x, inp + at, C, vec);
        load_row(p, proj + at, C, vec);
        if (row + stride < N) {
            prefetch_row(inp + at + (long long)stride * C, C);
            prefetch_row(proj + at + (long long)stride * C, C);
        }
        load_row(pb, proj_bias, C, vec);
        x128 res[ROW_CHUNKS];
        for (int i = 0; i < ROW_CHUNKS; i++)
            for (int k = 0; k < PACK; k++) res[i].v[k] = fromF(toF(x[i].v[k]) + (toF(p[i].v[k]) + toF(pb[i].v[k])));
        store_row(residual + at, res, C, vec);
        layernorm_row_in_registers(out + at, mean + row, rstd + row, res, weight, bias, C, vec);
    }
}

// rows strided over the grid (one wave, layernorm.py), one warp per row, the row in registers: inp, dout
// and dinp read once, dinp written once; while a row is worked on, L2 fetches the warp's next row. Each
// lane owns the same PACK-wide column chunks of every row (and keeps its chunks of weight) and adds its
// dweight | dbias terms into its warp's own shared rows (no atomics), stored lane-minor (element k of lane
// l's chunk i at i*32*PACK + k*32 + l: no bank conflicts); at the end the block sums its warps' rows into
// one partial row. With sums 3 a third shared row sums dinp as written: the bias gradient of the
// projection that wrote this residual stream (its dout is dinp). Dynamic shared memory: warps * sums * CP
// floats, CP = ROW_CHUNKS * 32*PACK (C rounded up to a multiple of 32*PACK).
#ifndef LN_BWD_MIN_BLOCKS                // blocks of 128 threads per SM the registers must leave room for:
#define LN_BWD_MIN_BLOCKS (ROW_CHUNKS <= 3 ? 4 : 1)   // 4 (128 registers) where that spills nothing
#endif
extern "C" __global__ void __launch_bounds__(128, LN_BWD_MIN_BLOCKS)
layernorm_backward_rows(floatX* dinp, float* partial, const floatX* dout, const floatX* inp, const floatX* weight,
                        const float* mean, const float* rstd, int N, int C, int sums) {
    extern __shared__ float acc[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int stride = gridDim.x * warps, CP = ROW_CHUNKS * 32 * PACK;
    float* dw_acc = acc + warp * sums * CP;      // this warp's dweight terms, its dbias terms, its dinp terms
    float* db_acc = dw_acc + CP;
    float* dp_acc = db_acc + CP;
    for (int i = lane; i < sums * CP; i += 32) dw_acc[i] = 0.0f;
    const bool vec = C % PACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    x128 w[ROW_CHUNKS];
    load_row(w, weight, C, vec);
    for (int row = blockIdx.x * warps + warp; row < N; row += stride) {
        const long long at = (long long)row * C;
        x128 x[ROW_CHUNKS], d[ROW_CHUNKS], g[ROW_CHUNKS];          // this lane's chunks of inp, dout, dinp
        load_row(x, inp + at, C, vec);
        load_row(d, dout + at, C, vec);
        load_row(g, dinp + at, C, vec);
        if (row + stride < N) {
            prefetch_row(inp + at + (long long)stride * C, C);
            prefetch_row(dout + at + (long long)stride * C, C);
            prefetch_row(dinp + at + (long long)stride * C, C);
        }
        const float m = mean[row], r = rstd[row];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int i = 0; i < ROW_CHUNKS; i++)
            for (int k = 0; k < PACK; k++) {
                const float dv = toF(d[i].v[k]), norm = (toF(x[i].v[k]) - m) * r;
                const float dnorm = dv * toF(w[i].v[k]);            // zero past C: dout reads as 0 there
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * norm;
                dw_acc[i * 32 * PACK + k * 32 + lane] += dv * norm;
                db_acc[i * 32 * PACK + k * 32 + lane] += dv;
            }
        dnorm_mean = warp_sum(dnorm_mean) / C;
        dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
        for (int i = 0; i < ROW_CHUNKS; i++)
            for (int k = 0; k < PACK; k++) {
                const float dnorm = toF(d[i].v[k]) * toF(w[i].v[k]), norm = (toF(x[i].v[k]) - m) * r;
                g[i].v[k] = fromF(toF(g[i].v[k]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r);
                if (sums == 3) dp_acc[i * 32 * PACK + k * 32 + lane] += toF(g[i].v[k]);   // past C: not read out
            }
        store_row(dinp + at, g, C, vec);
    }
    __syncthreads();
    store_dweight_dbias_partials(partial, acc, sums, C, CP);
}

// block (32, 32), grid ceil(sums C / 32): the column sums of partial (nblocks, sums C) accumulate into
// dweight (first C), dbias (next C) and, when sums is 3, dproj_bias (last C)
extern "C" __global__ void layernorm_backward_dweight_dbias(floatX* dweight, floatX* dbias, floatX* dproj_bias,
                                                            const float* partial, int nblocks, int sums, int C) {
    const int i = blockIdx.x * 32 + threadIdx.x;
    const float sum = column_sum(partial + i, nblocks, sums * C, i < sums * C);
    if (threadIdx.y != 0 || i >= sums * C) return;
    floatX* out = i < C ? dweight : i < 2 * C ? dbias : dproj_bias;
    out[i % C] = fromF(toF(out[i % C]) + sum);
}
