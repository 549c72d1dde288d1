// Matmul bias terms: the products themselves go to cuBLAS (llmnp/cuda/matmul.py); these kernels put the
// bias in place for the forward product and sum dout's rows into dbias (llmnp/matmul.py is the reference).
//
// forward:  out (N,OC) = bias (OC,) broadcast, before cuBLAS adds inp @ weight^T into it (beta = 1)
// backward: dbias (OC,) += sum over the N rows of dout (N,OC): matmul_backward_dbias_partial leaves per-block column sums in
//           partial (gridDim.y, OC), matmul_backward_dbias_total adds them up into dbias (deterministic, fp32 sums).
// add_into: out (n,) += inp (n,) float32 (a weight gradient summed in float32 over several products).
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
// block's rows; grid (ceil(OC / (32 PACK)), R): blockIdx.y picks one of R row ranges. Each thread loads
// DBIAS_ROWS of its rows (16 bytes each when vec) before adding them up, so that many loads are in flight.
#define DBIAS_ROWS 4
extern "C" __global__ void matmul_backward_dbias_partial(float* partial, const floatX* dout, int N, int OC) {
    const int col = (blockIdx.x * 32 + threadIdx.x) * PACK;
    const int rows_per_block = (N + gridDim.y - 1) / gridDim.y;
    const int row0 = blockIdx.y * rows_per_block;
    const int row1 = min(N, row0 + rows_per_block);
    const bool vec = OC % PACK == 0 && aligned16(dout);
    float acc[PACK];
    for (int k = 0; k < PACK; k++) acc[k] = 0.0f;
    if (col < OC && vec) {
        int row = row0 + threadIdx.y;
        for (; row + 8 * (DBIAS_ROWS - 1) < row1; row += 8 * DBIAS_ROWS) {
            x128 v[DBIAS_ROWS];                                   // rows row, row + 8, ...
            for (int u = 0; u < DBIAS_ROWS; u++) v[u] = load128(dout + (long long)(row + 8 * u) * OC + col);
            for (int u = 0; u < DBIAS_ROWS; u++)
                for (int k = 0; k < PACK; k++) acc[k] += toF(v[u].v[k]);
        }
        for (; row < row1; row += 8) {                            // the last rows, fewer than DBIAS_ROWS
            const x128 v = load128(dout + (long long)row * OC + col);
            for (int k = 0; k < PACK; k++) acc[k] += toF(v.v[k]);
        }
    } else if (col < OC) {                                        // element by element
        for (int row = row0 + threadIdx.y; row < row1; row += 8) {
            float v[PACK];
            load_floats(v, dout + (long long)row * OC + col, OC - col, false);
            for (int k = 0; k < PACK; k++) acc[k] += v[k];
        }
    }
    store_column_partials(partial, acc, OC);
}

// block (32, 32), grid ceil(OC / 32): dbias (OC,) += the column sums of partial (R, OC)
extern "C" __global__ void matmul_backward_dbias_total(floatX* dbias, const float* partial, int R, int OC) {
    const int col = blockIdx.x * 32 + threadIdx.x;
    const float sum = column_sum(partial + col, R, OC, col < OC);
    if (threadIdx.y == 0 && col < OC) dbias[col] = fromF(toF(dbias[col]) + sum);
}

// one element per thread, a grid-stride loop
extern "C" __global__ void add_into_kernel(floatX* out, const float* inp, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = fromF(toF(out[i]) + inp[i]);
}
