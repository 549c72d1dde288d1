// The squared global L2 norm of the gradients, for clipping (llmnp/adamw.py global_norm_squared).
//
// global_norm_squared_partial: each block sums g^2 over a grid-strided share of the buffer (PACK-wide chunks, one
// 16-byte load each where the buffer is 16-byte aligned) in fp32 and writes one partial;
// global_norm_squared_total: one block adds the partials up in double. Deterministic for a fixed grid.
#include "common.cuh"

extern "C" __global__ void global_norm_squared_partial(float* partial, const floatX* grads, long long n) {
    const bool vec = aligned16(grads);
    float sum = 0.0f;
    for (long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK; i < n;
         i += (long long)gridDim.x * blockDim.x * PACK) {
        float g[PACK];
        load_floats(g, grads + i, (int)min((long long)PACK, n - i), vec);
        for (int k = 0; k < PACK; k++) sum += g[k] * g[k];
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

extern "C" __global__ void global_norm_squared_total(double* out, const float* partial, int nblocks) {
    __shared__ double sums[1024];
    double sum = 0.0;
    for (int i = threadIdx.x; i < nblocks; i += blockDim.x) sum += partial[i];
    sums[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = sums[0];
}
