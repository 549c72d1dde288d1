// The classifier's loss: softmax over the first V of Vp columns, cross-entropy, and their fused
// backward (llmnp/classifier.py is the reference).
//
// softmax:  probs = softmax(logits[:, :V]) in fp32 arithmetic, probs[:, V:] = 0;  one block per row,
//           reading the row twice (online max and sum, then the write).
// loss:     losses (float) = -log probs[target];  one thread per row.
// backward: dlogits = (probs - onehot(target)) * dloss, overwritten; dlogits may be probs itself
//           (elementwise, each element read before it is written). One block per row.
// Shapes: N rows (B*T), V vocab, Vp padded vocab; targets int32 (N,). N * Vp may exceed 2^31: 64-bit offsets.
#include "common.cuh"

// (max, sum of exp(x - max)) pairs: fold x into one, and merge two
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;
        m = x;
    } else {
        s += expf(x - m);
    }
}

__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2) {
    const float M = fmaxf(m, m2);
    if (M == -INFINITY) return;                       // both empty
    s = s * expf(m - M) + s2 * expf(m2 - M);
    m = M;
}

// one block per row: one pass for the row's max and sum (online), one to write; 16-byte packs where
// Vp is a whole number of packs and the buffers are aligned
extern "C" __global__ void softmax_forward_kernel2(floatX* probs, const floatX* logits, int N, int V, int Vp) {
    __shared__ float shared_m[32], shared_s[32];
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    floatX* p = probs + row * Vp;
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(probs);
    float m = -INFINITY, s = 0.0f;
    if (vec) {
        for (int c = threadIdx.x * PACK; c < V; c += blockDim.x * PACK) {
            const x128 pk = load128(x + c);
            for (int k = 0; k < PACK; k++)
                if (c + k < V) online_add(m, s, toF(pk.v[k]));
        }
    } else {
        for (int c = threadIdx.x; c < V; c += blockDim.x) online_add(m, s, toF(x[c]));
    }
    for (int o = 16; o > 0; o >>= 1)
        online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        shared_m[warp] = m;
        shared_s[warp] = s;
    }
    __syncthreads();
    m = lane < blockDim.x / 32 ? shared_m[lane] : -INFINITY;
    s = lane < blockDim.x / 32 ? shared_s[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        online_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    const float scale = 1.0f / s;
    if (vec) {
        for (int c = threadIdx.x * PACK; c < Vp; c += blockDim.x * PACK) {
            const x128 pk = load128(x + c);
            x128 out;
            for (int k = 0; k < PACK; k++) out.v[k] = fromF(c + k < V ? expf(toF(pk.v[k]) - m) * scale : 0.0f);
            store128(p + c, out);
        }
    } else {
        for (int c = threadIdx.x; c < Vp; c += blockDim.x) p[c] = fromF(c < V ? expf(toF(x[c]) - m) * scale : 0.0f);
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
