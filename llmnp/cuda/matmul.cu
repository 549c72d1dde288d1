// Matmul bias terms: the products themselves go to cuBLAS (llmnp/cuda/matmul.py); these kernels put the
// bias in place for the forward product and sum dout's rows into dbias (llmnp/matmul.py is the reference).
//
// forward:  out (N,OC) = bias (OC,) broadcast, before cuBLAS adds inp @ weight^T into it (beta = 1)
// backward: dbias (OC,) += sum over the N rows of dout (N,OC): matmul_backward_dbias_partial leaves per-block column sums in
//           partial (gridDim.y, OC), matmul_backward_dbias_total adds them up into dbias (deterministic, fp32 sums).
#include "common.cuh"

// out (N,OC) = bias, broadcast over the rows (written only: cuBLAS then adds the product, beta = 1)
extern "C" __global__ void matmul_forward_kernel(floatX* out, const floatX* bias, int N, int OC) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    const long long n = (long long)N * OC;
    if (i >= n) return;
    if (i + PACK <= n && OC % PACK == 0 && aligned16(out) && aligned16(bias)) {
        store128(out + i, load128(bias + i % OC));   // a pack never crosses a row when OC % PACK == 0
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) out[k] = bias[k % OC];
    }
}

// block (32, 8): threadIdx.x picks a PACK-wide chunk of columns, threadIdx.y strides over this
// block's rows; grid (ceil(OC / (32 PACK)), R): blockIdx.y picks one of R row ranges
extern "C" __global__ void matmul_backward_dbias_partial(float* partial, const floatX* dout, int N, int OC) {
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

extern "C" __global__ void matmul_backward_dbias_total(floatX* dbias, const float* partial, int R, int OC) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= OC) return;
    float sum = 0.0f;
    for (int k = 0; k < R; k++) sum += partial[(long long)k * OC + col];
    dbias[col] = fromF(toF(dbias[col]) + sum);
}
