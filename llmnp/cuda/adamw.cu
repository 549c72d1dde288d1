// AdamW over flat buffers (llmnp/adamw.py is the reference); one thread per parameter.
//
//   g = grad * grad_scale;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   param -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + weight_decay * param),  bc = 1 - beta^t
// adamw_update_inplace updates params in place (fp32 mode, or bf16 without master weights). adamw_update_master updates the
// fp32 master copy and writes the storage params (bf16) from it. bf16 results are rounded
// stochastically (common.cuh), seeded per update and tensor, indexed by the parameter's position in
// the whole flat buffer (offset + i), so a ZeRO-1 slice rounds exactly as the whole buffer would.
// m and v are float in both modes.
#include "common.cuh"

__device__ __forceinline__ float adamw_step(float p, float g, float* m, float* v, float lr, float beta1,
                                            float beta2, float bc1, float bc2, float eps, float weight_decay) {
    const float mi = beta1 * *m + (1.0f - beta1) * g;
    const float vi = beta2 * *v + (1.0f - beta2) * g * g;
    *m = mi;
    *v = vi;
    return p - lr * (mi / bc1 / (sqrtf(vi / bc2) + eps) + weight_decay * p);
}

extern "C" __global__ void adamw_update_inplace(floatX* params, const floatX* grads, float* m, float* v, long long n,
                                                float lr, float beta1, float beta2, float bc1, float bc2, float eps,
                                                float weight_decay, float grad_scale, unsigned seed, long long offset) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = toF(grads[i]) * grad_scale;
    const float p = adamw_step(toF(params[i]), g, &m[i], &v[i], lr, beta1, beta2, bc1, bc2, eps, weight_decay);
    params[i] = fromF_stochastic(p, rounding_bits(offset + i, seed));
}

extern "C" __global__ void adamw_update_master(floatX* params, float* master, const floatX* grads, float* m, float* v,
                                                long long n, float lr, float beta1, float beta2, float bc1, float bc2,
                                                float eps, float weight_decay, float grad_scale, unsigned seed,
                                                long long offset) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = toF(grads[i]) * grad_scale;
    const float p = adamw_step(master[i], g, &m[i], &v[i], lr, beta1, beta2, bc1, bc2, eps, weight_decay);
    master[i] = p;
    params[i] = fromF_stochastic(p, rounding_bits(offset + i, seed));
}
