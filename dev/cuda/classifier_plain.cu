// The earlier form of classifier.cu's crossentropy_forward_backward_kernel, kept runnable beside the
// mainline (dev/cuda/README.md, "classifier"): one block per row (two blocks per SM at Vp = 50,304 in
// bf16), each thread loading one 16-byte pack of the row into registers at a time, keeping its running
// max and sum and storing the pack into the shared copy from which dlogits are then written. Same
// arguments as the mainline kernel except the last: cached (1: the row fits in shared memory) instead of
// stages, grid N.
#include "classifier.cu"

extern "C" __global__ void crossentropy_forward_backward_plain(float* losses, floatX* dlogits, const floatX* logits,
                                                                const int* targets, float dloss, int N, int V,
                                                                int Vp, int cached) {
    extern __shared__ __align__(16) unsigned char row_cache[];
    floatX* cache = cached ? reinterpret_cast<floatX*>(row_cache) : nullptr;
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    floatX* d = dlogits + row * Vp;
    const int target = targets[row];
    const float target_logit = toF(x[target]);
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(dlogits);
    const int step = vec ? PACK : 1;
    float m, s;
    row_max_sum(m, s, x, V, vec, cache);   // its barriers also complete the cached row
    const float row_lse = m + logf(s);
    if (threadIdx.x == 0) losses[row] = row_lse - target_logit;
    const floatX* src = cached ? cache : x;
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, src + c, min(step, V - c), vec);
        for (int k = 0; k < PACK; k++)
            v[k] = c + k < V ? __expf(v[k] - row_lse) * dloss - (c + k == target ? dloss : 0.0f) : 0.0f;
        store_floats(d + c, v, vec ? Vp - c : 1, vec);
    }
}

// The form before crossentropy_row_shared: the same strided blocks and whole-row cp.async copy as the
// mainline kernel, then crossentropy_row over the shared copy (three reads of it, two exps per logit:
// the sum's, then dlogits from exp(x - lse)). Same arguments as the mainline kernel; the row must fit.
extern "C" __global__ void crossentropy_forward_backward_twoexp(float* losses, floatX* dlogits, const floatX* logits,
                                                                 const int* targets, float dloss, int N, int V,
                                                                 int Vp, int cached) {
    extern __shared__ __align__(16) unsigned char row_cache[];
    floatX* cache = reinterpret_cast<floatX*>(row_cache);
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(dlogits);
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const floatX* x = logits + row * Vp;
        const int target = targets[row];
        const float target_logit = toF(x[target]);
        copy_row_async(cache, x, Vp, vec);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        crossentropy_row(losses + row, dlogits + row * Vp, cache, target, target_logit, dloss, V, Vp, vec);
        __syncthreads();
    }
}
