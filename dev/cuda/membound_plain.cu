// The earlier forms of three memory-bound kernels, kept runnable beside the mainline (dev/cuda/README.md,
// "membound"): they read each row in passes of a runtime-C loop, one 16-byte load per lane in flight.
// - residual_layernorm_forward_plain: layernorm.cu's residual_layernorm_forward_kernel, storing the
//   residual row and reading it back three times (layernorm_row);
// - layernorm_backward_rows_plain: layernorm_backward_rows, reading the row twice (the two means, then
//   dinp), adding dweight | dbias into shared memory as it goes;
// - matmul_backward_dbias_partial_plain: matmul.cu's matmul_backward_dbias_partial, one row per thread
//   at a time;
// - layernorm_backward_dweight_dbias_plain, matmul_backward_dbias_total_plain: the column totals of the
//   partial rows, one thread per column adding all R rows.
// Same arguments, grids and semantics as the mainline kernels they were (see those files' headers).
#include "layernorm.cu"

// one warp per row: the residual row first (lane by lane, in fp32, rounded once), then its layernorm,
// in which each lane reads back only what it has just written itself (no barrier needed). residual may
// be proj.
extern "C" __global__ void residual_layernorm_forward_plain(floatX* residual, floatX* out, float* mean, float* rstd,
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
extern "C" __global__ void layernorm_backward_rows_plain(floatX* dinp, float* partial, const floatX* dout,
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
    store_dweight_dbias_partials(partial, acc, 2, C, CP);
}

// block (32, 8): threadIdx.x picks a PACK-wide chunk of columns, threadIdx.y strides over this
// block's rows; grid (ceil(OC / (32 PACK)), R): blockIdx.y picks one of R row ranges
extern "C" __global__ void matmul_backward_dbias_partial_plain(float* partial, const floatX* dout, int N, int OC) {
    const int col = (blockIdx.x * 32 + threadIdx.x) * PACK;
    const int rows_per_block = (N + gridDim.y - 1) / gridDim.y;
    const int row0 = blockIdx.y * rows_per_block;
    const int row1 = min(N, row0 + rows_per_block);
    const bool vec = OC % PACK == 0 && aligned16(dout);
    float acc[PACK];
    for (int k = 0; k < PACK; k++) acc[k] = 0.0f;
    if (col < OC)
        for (int row = row0 + threadIdx.y; row < row1; row += 8) {
            float v[PACK];
            load_floats(v, dout + (long long)row * OC + col, OC - col, vec);
            for (int k = 0; k < PACK; k++) acc[k] += v[k];
        }
    store_column_partials(partial, acc, OC);
}

// one thread per column of partial (nblocks, 2C): dweight (first C) and dbias (last C) accumulate
extern "C" __global__ void layernorm_backward_dweight_dbias_plain(floatX* dweight, floatX* dbias, const float* partial,
                                                                  int nblocks, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * C) return;
    float sum = 0.0f;
    for (int k = 0; k < nblocks; k++) sum += partial[(long long)k * 2 * C + i];
    if (i < C) dweight[i] = fromF(toF(dweight[i]) + sum);
    else dbias[i - C] = fromF(toF(dbias[i - C]) + sum);
}

extern "C" __global__ void matmul_backward_dbias_total_plain(floatX* dbias, const float* partial, int R, int OC) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= OC) return;
    float sum = 0.0f;
    for (int k = 0; k < R; k++) sum += partial[(long long)k * OC + col];
    dbias[col] = fromF(toF(dbias[col]) + sum);
}
