// GELU, tanh approximation (llmnp/gelu.py is the reference).
//
// forward:  out = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
// backward: dinp = dout * gelu'(x)   (overwritten)
// One 16-byte pack of PACK elements per thread; element by element where unaligned or at the tail.
// backward may run in place (dinp == dout): each element is read before it is written, by the same thread.
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
