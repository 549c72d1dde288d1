// Matmul epilogues: the products themselves go to cuBLAS (llmnp/cuda/matmul.py); these kernels add
// the bias after the forward product and sum dout's rows into dbias (llmnp/matmul.py is the reference).
//
// forward:  out (N,OC) += bias (OC,)      (out already holds inp @ weight^T)
// backward: dbias (OC,) += sum over the N rows of dout (N,OC): kernel1 leaves per-block column sums in
//           partial (gridDim.y, OC), kernel2 adds them up into dbias (deterministic, fp32 sums).
#include "common.cuh"

extern "C" __global__ void matmul_forward_kernel1(floatX* out, const floatX* bias, int N, int OC) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    const long long n = (long long)N * OC;
    if (i >= n) return;
    if (i + PACK <= n && OC % PACK == 0 && aligned16(out) && aligned16(bias)) {
        x128 o = load128(out + i);
        const x128 b = load128(bias + i % OC);       // a pack never crosses a row when OC % PACK == 0
        for (int k = 0; k < PACK; k++) o.v[k] = fromF(toF(o.v[k]) + toF(b.v[k]));
        store128(out + i, o);
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) out[k] = fromF(toF(out[k]) + toF(bias[k % OC]));
    }
}

// block (32, 8): threadIdx.x picks a column, threadIdx.y strides over this block's rows;
// grid (ceil(OC/32), R): blockIdx.y picks one of R row ranges
extern "C" __global__ void matmul_backward_kernel1(float* partial, const floatX* dout, int N, int OC) {
    __shared__ float sums[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int rows_per_block = (N + gridDim.y - 1) / gridDim.y;
    const int row0 = blockIdx.y * rows_per_block;
    const int row1 = min(N, row0 + rows_per_block);
    float sum = 0.0f;
    if (col < OC)
        for (int row = row0 + threadIdx.y; row < row1; row += 8) sum += toF(dout[(long long)row * OC + col]);
    sums[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < OC) {
        for (int k = 1; k < 8; k++) sum += sums[k][threadIdx.x];
        partial[(long long)blockIdx.y * OC + col] = sum;
    }
}

extern "C" __global__ void matmul_backward_kernel2(floatX* dbias, const float* partial, int R, int OC) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= OC) return;
    float sum = 0.0f;
    for (int k = 0; k < R; k++) sum += partial[(long long)k * OC + col];
    dbias[col] = fromF(toF(dbias[col]) + sum);
}
