// LayerNorm over the channels of each row, eps 1e-5, biased variance (llmnp/layernorm.py is the reference).
//
// forward:  mean, rstd (float, saved) and out = (x - mean) * rstd * w + b;  one warp per row.
// residual_layernorm (forward only): residual = inp + proj + proj_bias, stored, then the layernorm of the
//           stored residual, in one pass per row: its backward is the plain layernorm's.
// backward: dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),  dnorm = dout * w;
//           dweight += sum_rows dout * norm,  dbias += sum_rows dout. All three accumulate.
//           layernorm_backward_rows adds into dinp and leaves one partial (dweight | dbias) row per block in `partial`
//           (gridDim.x, 2C); layernorm_backward_dweight_dbias sums those rows into dweight and dbias: deterministic, no atomics.
// Shapes: N rows (B*T), C channels; mean, rstd (N,) float; weight, bias (C,).
#include "common.cuh"

#define LN_EPS 1e-5f

// the layernorm of one row x (C,) into o, by one warp; lane l reads only columns l*PACK.. of each
// 32*PACK-wide chunk (what it wrote itself, in residual_layernorm_forward_kernel)
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

// one warp per row: the residual row first (lane by lane, in fp32, rounded once), then its layernorm,
// in which each lane reads back only what it has just written itself (no barrier needed). residual may
// be proj.
extern "C" __global__ void residual_layernorm_forward_kernel(floatX* residual, floatX* out, float* mean, float* rstd,
                                                              const floatX* inp, const floatX* proj,
                                                              const floatX* proj_bias, const floatX* weight,
                                                              const floatX* bias, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const bool vec = C % PACK == 0 && aligned16(residual) && aligned16(out) && aligned16(inp) && aligned16(proj) &&
                     aligned16(proj_bias) && aligned16(weight) && aligned16(bias);
    const long long at = (long long)row * C;
    for (int c = lane * PACK; c < C; c += 32 * PACK) {
        float xv[PACK], pv[PACK], bv[PACK];
        load_floats(xv, inp + at + c, C - c, vec);
        load_floats(pv, proj + at + c, C - c, vec);
        load_floats(bv, proj_bias + c, C - c, vec);
        for (int k = 0; k < PACK; k++) xv[k] += pv[k] + bv[k];
        store_floats(residual + at + c, xv, C - c, vec);
    }
    layernorm_row(out + at, mean + row, rstd + row, residual + at, weight, bias, C, vec);
}

// one warp per row, rows strided over the grid; each lane owns the same PACK-wide column chunks of
// every row and adds its dweight | dbias terms into its warp's own shared rows (no atomics), stored
// lane-minor (element k of lane l's chunk i at i*32*PACK + k*32 + l: no bank conflicts); at the end the
// block sums its warps' rows into one partial row. Dynamic shared memory: warps * 2 * CP floats, CP = C
// rounded up to a multiple of 32*PACK.
extern "C" __global__ void layernorm_backward_rows(floatX* dinp, float* partial, const floatX* dout,
                                                      const floatX* inp, const floatX* weight, const float* mean,
                                                      const float* rstd, int N, int C) {
    extern __shared__ float acc[];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int CP = (C + 32 * PACK - 1) / (32 * PACK) * (32 * PACK);
    float* dw_acc = acc + warp * 2 * CP;         // this warp's dweight terms, then its dbias terms
    float* db_acc = dw_acc + CP;
    for (int i = lane; i < 2 * CP; i += 32) dw_acc[i] = 0.0f;
    const bool vec = C % PACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
    for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
        const floatX* x = inp + (long long)row * C;
        const floatX* d = dout + (long long)row * C;
        floatX* dx = dinp + (long long)row * C;
        const float m = mean[row], r = rstd[row];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int c = lane * PACK; c < C; c += 32 * PACK) {
            float xv[PACK], dv[PACK], wv[PACK];
            load_floats(xv, x + c, C - c, vec);
            load_floats(dv, d + c, C - c, vec);
            load_floats(wv, weight + c, C - c, vec);
            for (int k = 0; k < PACK; k++) {
                const float dnorm = dv[k] * wv[k];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * (xv[k] - m) * r;
            }
        }
        dnorm_mean = warp_sum(dnorm_mean) / C;
        dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
        for (int c = lane * PACK; c < C; c += 32 * PACK) {
            float xv[PACK], dv[PACK], wv[PACK], gv[PACK];
            load_floats(xv, x + c, C - c, vec);
            load_floats(dv, d + c, C - c, vec);
            load_floats(wv, weight + c, C - c, vec);
            load_floats(gv, dx + c, C - c, vec);
            const int base = (c - lane * PACK) + lane;              // i*32*PACK + lane
            for (int k = 0; k < PACK; k++) {
                const float norm = (xv[k] - m) * r;
                gv[k] += (dv[k] * wv[k] - dnorm_mean - norm * dnorm_norm_mean) * r;
                dw_acc[base + k * 32] += dv[k] * norm;              // zero past C: dv reads as 0 there
                db_acc[base + k * 32] += dv[k];
            }
            store_floats(dx + c, gv, C - c, vec);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) {
        const int part = i / C, c = i % C;                          // dweight or dbias, column c
        const int rem = c % (32 * PACK);
        const int at = part * CP + (c - rem) + (rem % PACK) * 32 + rem / PACK;
        float sum = 0.0f;
        for (int w = 0; w < warps; w++) sum += acc[w * 2 * CP + at];
        partial[(long long)blockIdx.x * 2 * C + i] = sum;
    }
}

// one thread per column of partial (nblocks, 2C): dweight (first C) and dbias (last C) accumulate
extern "C" __global__ void layernorm_backward_dweight_dbias(floatX* dweight, floatX* dbias, const float* partial,
                                                      int nblocks, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * C) return;
    float sum = 0.0f;
    for (int k = 0; k < nblocks; k++) sum += partial[(long long)k * 2 * C + i];
    if (i < C) dweight[i] = fromF(toF(dweight[i]) + sum);
    else dbias[i - C] = fromF(toF(dbias[i - C]) + sum);
}
