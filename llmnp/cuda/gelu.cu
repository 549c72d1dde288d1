// GELU, tanh approximation (llmnp/gelu.py is the reference).
//
// forward:  out = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
// backward: dinp = dout * gelu'(x)   (overwritten)
// One 16-byte pack of PACK elements per thread; element by element where unaligned or at the tail.
// bias_gelu: out = gelu(inp + bias), bias (OC,) broadcast over the N rows of inp (N,OC); its backward
//           writes dinp = dout * gelu'(inp + bias) and leaves per-block column sums of dinp (fp32, before
//           rounding) in partial (gridDim.y, OC), which matmul.cu's matmul_backward_dbias_total adds into dbias.
#include "common.cuh"

#define GELU_SCALE 0.7978845608028654f   // sqrt(2/pi)

__device__ __forceinline__ float gelu(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    const float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

extern "C" __global__ void gelu_forward_kernel(floatX* out, const floatX* inp, long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    if (i >= n) return;
    if (i + PACK <= n && aligned16(out) && aligned16(inp)) {
        const x128 x = load128(inp + i);
        x128 o;
        for (int k = 0; k < PACK; k++) o.v[k] = fromF(gelu(toF(x.v[k])));
        store128(out + i, o);
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) out[k] = fromF(gelu(toF(inp[k])));
    }
}

// as gelu_forward_kernel, a pack never crossing a row (OC % PACK == 0) on the vector path
extern "C" __global__ void bias_gelu_forward_kernel(floatX* out, const floatX* inp, const floatX* bias, long long n,
                                                     int OC) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    if (i >= n) return;
    if (i + PACK <= n && OC % PACK == 0 && aligned16(out) && aligned16(inp) && aligned16(bias)) {
        const x128 x = load128(inp + i), b = load128(bias + i % OC);
        x128 o;
        for (int k = 0; k < PACK; k++) o.v[k] = fromF(gelu(toF(x.v[k]) + toF(b.v[k])));
        store128(out + i, o);
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) out[k] = fromF(gelu(toF(inp[k]) + toF(bias[k % OC])));
    }
}

extern "C" __global__ void gelu_backward_kernel(floatX* dinp, const floatX* inp, const floatX* dout,
                                                 long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    if (i >= n) return;
    if (i + PACK <= n && aligned16(dinp) && aligned16(inp) && aligned16(dout)) {
        const x128 x = load128(inp + i), d = load128(dout + i);
        x128 o;
        for (int k = 0; k < PACK; k++) o.v[k] = fromF(toF(d.v[k]) * gelu_grad(toF(x.v[k])));
        store128(dinp + i, o);
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) dinp[k] = fromF(toF(dout[k]) * gelu_grad(toF(inp[k])));
    }
}

// block (32, 8): threadIdx.x picks a PACK-wide chunk of columns, threadIdx.y strides over this block's
// rows; grid (ceil(OC / (32 PACK)), R): blockIdx.y picks one of R row ranges (as matmul_backward_dbias_partial)
extern "C" __global__ void bias_gelu_backward_kernel(floatX* dinp, float* partial, const floatX* dout,
                                                      const floatX* inp, const floatX* bias, int N, int OC) {
    const int col = (blockIdx.x * 32 + threadIdx.x) * PACK;
    const int rows_per_block = (N + gridDim.y - 1) / gridDim.y;
    const int row0 = blockIdx.y * rows_per_block;
    const int row1 = min(N, row0 + rows_per_block);
    const bool vec = OC % PACK == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(bias);
    float acc[PACK], b[PACK];
    for (int k = 0; k < PACK; k++) acc[k] = 0.0f;
    if (col < OC) {
        load_floats(b, bias + col, OC - col, vec);
        for (int row = row0 + threadIdx.y; row < row1; row += 8) {
            const long long at = (long long)row * OC + col;
            float x[PACK], d[PACK];
            load_floats(x, inp + at, OC - col, vec);
            load_floats(d, dout + at, OC - col, vec);        // 0 past OC: adds nothing to acc
            for (int k = 0; k < PACK; k++) {
                d[k] *= gelu_grad(x[k] + b[k]);
                acc[k] += d[k];
            }
            store_floats(dinp + at, d, OC - col, vec);
        }
    }
    store_column_partials(partial, acc, OC);
}
