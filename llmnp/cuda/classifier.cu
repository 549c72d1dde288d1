// The classifier's loss: softmax over the first V of Vp columns, cross-entropy, and their fused
// backward (llmnp/classifier.py is the reference).
//
// softmax:  probs = softmax(logits[:, :V]) in fp32 arithmetic, probs[:, V:] = 0;  one block per row,
//           one read of the row from device memory (max), the sum and the write from a shared copy.
// loss:     losses (float) = -log probs[target];  one thread per row.
// backward: dlogits = (probs - onehot(target)) * dloss, overwritten; dlogits may be probs itself
//           (elementwise, each element read before it is written). One block per row.
// Shapes: N rows (B*T), V vocab, Vp padded vocab; targets int32 (N,). N * Vp may exceed 2^31: 64-bit offsets.
#include "common.cuh"

// one block per row, three passes: the max (keeping the row in dynamic shared memory when `cached`,
// Vp floatX), the sum of exp(x - max), the write; the last two read the shared copy, so logits are read
// from device memory once. 16-byte packs where Vp is a whole number of packs and the buffers are aligned.
extern "C" __global__ void softmax_forward_kernel2(floatX* probs, const floatX* logits, int N, int V, int Vp, int cached) {
    extern __shared__ __align__(16) unsigned char row_cache[];
    floatX* cache = reinterpret_cast<floatX*>(row_cache);
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    floatX* p = probs + row * Vp;
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(probs);
    const int step = vec ? PACK : 1;
    float m = -INFINITY;
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, x + c, vec ? Vp - c : 1, vec);
        if (cached) {
            if (vec) store128(cache + c, load128(x + c));   // a second load of the same pack: from L1
            else cache[c] = x[c];
        }
        for (int k = 0; k < PACK; k++)
            if (k < step && c + k < V) m = fmaxf(m, v[k]);
    }
    m = block_max(m);                 // its barrier also completes the cached row
    const floatX* src = cached ? cache : x;
    float s = 0.0f;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, src + c, vec ? V - c : 1, vec);
        for (int k = 0; k < PACK; k++)
            if (k < step && c + k < V) s += __expf(v[k] - m);
    }
    const float scale = 1.0f / block_sum(s);
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, src + c, vec ? Vp - c : 1, vec);
        for (int k = 0; k < PACK; k++) v[k] = c + k < V ? __expf(v[k] - m) * scale : 0.0f;
        store_floats(p + c, v, vec ? Vp - c : 1, vec);
    }
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
