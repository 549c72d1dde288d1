// The classifier's loss: softmax over the first V of Vp columns, cross-entropy, and their fused
// backward (llmnp/classifier.py is the reference).
//
// softmax:  probs = softmax(logits[:, :V]) in fp32 arithmetic, probs[:, V:] = 0;  one block per row.
// loss:     losses (float) = -log probs[target];  one thread per row.
// backward: dlogits = (probs - onehot(target)) * dloss, overwritten; dlogits may be probs itself
//           (elementwise, each element read before it is written). One block per row.
// Shapes: N rows (B*T), V vocab, Vp padded vocab; targets int32 (N,). N * Vp may exceed 2^31: 64-bit offsets.
#include "common.cuh"

extern "C" __global__ void softmax_forward_kernel1(floatX* probs, const floatX* logits, int N, int V, int Vp) {
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    floatX* p = probs + row * Vp;
    float maxval = -INFINITY;
    for (int c = threadIdx.x; c < V; c += blockDim.x) maxval = fmaxf(maxval, toF(x[c]));
    maxval = block_max(maxval);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) sum += expf(toF(x[c]) - maxval);
    const float scale = 1.0f / block_sum(sum);
    for (int c = threadIdx.x; c < Vp; c += blockDim.x)
        p[c] = fromF(c < V ? expf(toF(x[c]) - maxval) * scale : 0.0f);
}

extern "C" __global__ void crossentropy_forward_kernel1(float* losses, const floatX* probs, const int* targets, int N,
                                                        int Vp) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    losses[row] = -logf(toF(probs[(long long)row * Vp + targets[row]]));
}

extern "C" __global__ void crossentropy_softmax_backward_kernel1(floatX* dlogits, const floatX* probs,
                                                                 const int* targets, float dloss, int N, int Vp) {
    const long long row = blockIdx.x;
    const int target = targets[row];
    const floatX* p = probs + row * Vp;
    floatX* d = dlogits + row * Vp;
    if (Vp % PACK == 0 && aligned16(probs) && aligned16(dlogits)) {
        for (int c = threadIdx.x * PACK; c < Vp; c += blockDim.x * PACK) {
            const x128 pk = load128(p + c);
            x128 o;
            for (int k = 0; k < PACK; k++) o.v[k] = fromF(toF(pk.v[k]) * dloss - (c + k == target ? dloss : 0.0f));
            store128(d + c, o);
        }
    } else {
        for (int c = threadIdx.x; c < Vp; c += blockDim.x)
            d[c] = fromF(toF(p[c]) * dloss - (c == target ? dloss : 0.0f));
    }
}
