// Residual connection: out = inp1 + inp2 (llmnp/residual.py is the reference).
//
// backward: dinp1 += dout, dinp2 += dout (both accumulate). out may be inp1 or inp2 (elementwise).
// Each thread handles one 16-byte pack of PACK elements, element by element where a pointer is not
// 16-byte aligned or the pack runs past n.
#include "common.cuh"

extern "C" __global__ void residual_forward_kernel(floatX* out, const floatX* inp1, const floatX* inp2,
                                                    long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    if (i >= n) return;
    if (i + PACK <= n && aligned16(out) && aligned16(inp1) && aligned16(inp2)) {
        const x128 a = load128(inp1 + i), b = load128(inp2 + i);
        x128 o;
        for (int k = 0; k < PACK; k++) o.v[k] = fromF(toF(a.v[k]) + toF(b.v[k]));
        store128(out + i, o);
    } else {
        for (long long k = i; k < n && k < i + PACK; k++) out[k] = fromF(toF(inp1[k]) + toF(inp2[k]));
    }
}

extern "C" __global__ void residual_backward_kernel(floatX* dinp1, floatX* dinp2, const floatX* dout,
                                                     long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * PACK;
    for (long long k = i; k < n && k < i + PACK; k++) {
        const float d = toF(dout[k]);
        dinp1[k] = fromF(toF(dinp1[k]) + d);
        dinp2[k] = fromF(toF(dinp2[k]) + d);
    }
}
