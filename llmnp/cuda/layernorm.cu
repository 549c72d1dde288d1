// LayerNorm over the channels of each row, eps 1e-5, biased variance (llmnp/layernorm.py is the reference).
//
// forward:  mean, rstd (float, saved) and out = (x - mean) * rstd * w + b;  one warp per row.
// backward: dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),  dnorm = dout * w;
//           dweight += sum_rows dout * norm,  dbias += sum_rows dout. All three accumulate.
//           kernel1 adds into dinp and leaves one partial (dweight | dbias) row per block in `partial`
//           (gridDim.x, 2C); kernel2 sums those rows into dweight and dbias: deterministic, no atomics
//           in global memory.
// Shapes: N rows (B*T), C channels; mean, rstd (N,) float; weight, bias (C,).
#include "common.cuh"

#define LN_EPS 1e-5f

extern "C" __global__ void layernorm_forward_kernel1(floatX* out, float* mean, float* rstd, const floatX* inp,
                                                     const floatX* weight, const floatX* bias, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const floatX* x = inp + (long long)row * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += toF(x[c]);
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = toF(x[c]) - m;
        var += d * d;
    }
    const float r = 1.0f / sqrtf(warp_sum(var) / C + LN_EPS);
    floatX* o = out + (long long)row * C;
    for (int c = lane; c < C; c += 32) o[c] = fromF((toF(x[c]) - m) * r * toF(weight[c]) + toF(bias[c]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// one warp per row, rows strided over the grid; dynamic shared memory: 2C floats
extern "C" __global__ void layernorm_backward_kernel1(floatX* dinp, float* partial, const floatX* dout,
                                                      const floatX* inp, const floatX* weight, const float* mean,
                                                      const float* rstd, int N, int C) {
    extern __shared__ float acc[];           // acc[0:C] dweight, acc[C:2C] dbias, this block's rows
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int row = blockIdx.x * warps + threadIdx.x / 32; row < N; row += gridDim.x * warps) {
        const floatX* x = inp + (long long)row * C;
        const floatX* d = dout + (long long)row * C;
        const float m = mean[row], r = rstd[row];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int c = lane; c < C; c += 32) {
            const float norm = (toF(x[c]) - m) * r;
            const float dnorm = toF(d[c]) * toF(weight[c]);
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean = warp_sum(dnorm_mean) / C;
        dnorm_norm_mean = warp_sum(dnorm_norm_mean) / C;
        floatX* dx = dinp + (long long)row * C;
        for (int c = lane; c < C; c += 32) {
            const float norm = (toF(x[c]) - m) * r;
            const float dc = toF(d[c]);
            const float dnorm = dc * toF(weight[c]);
            dx[c] = fromF(toF(dx[c]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r);
            atomicAdd(&acc[c], dc * norm);
            atomicAdd(&acc[C + c], dc);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * C; i += blockDim.x) partial[(long long)blockIdx.x * 2 * C + i] = acc[i];
}

// one thread per column of partial (nblocks, 2C): dweight (first C) and dbias (last C) accumulate
extern "C" __global__ void layernorm_backward_kernel2(floatX* dweight, floatX* dbias, const float* partial,
                                                      int nblocks, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * C) return;
    float sum = 0.0f;
    for (int k = 0; k < nblocks; k++) sum += partial[(long long)k * 2 * C + i];
    if (i < C) dweight[i] = fromF(toF(dweight[i]) + sum);
    else dbias[i - C] = fromF(toF(dbias[i - C]) + sum);
}
