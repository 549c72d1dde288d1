// The classifier: softmax over the first V of Vp columns, and the fused cross-entropy loss and its
// backward that training uses (llmnp/classifier.py is the reference and states the rules).
//
// softmax:  probs = softmax(logits[:, :V]) in fp32 arithmetic, probs[:, V:] = 0;  one block per row,
//           one read of the row from device memory (max), the sum and the write from a shared copy.
//           Not used in training (sampling, tests).
// loss:     lse (float) = logsumexp(logits[:V]), saved, and losses (float) = lse - logits[target];  one
//           block per row, one read of the row with a running max and sum in fp32; logits are not
//           written, no probs anywhere.
// backward: dlogits = (exp(logits[:V] - lse) - onehot(target)) * dloss, 0 in columns V..Vp-1,
//           overwritten; one read and one write of each row. dlogits may be logits itself: each thread
//           reads a pack, then writes that same pack.
// both:     the loss and the backward in one kernel (training's classifier): one read of each row from
//           device memory, kept in shared memory for the write of dlogits; no lse kept.
// Shapes: N rows (B*T), V vocab, Vp padded vocab; targets int32 (N,). N * Vp may exceed 2^31: 64-bit offsets.
#include "common.cuh"

// one block per row, three passes: the max (keeping the row in dynamic shared memory when `cached`,
// Vp floatX), the sum of exp(x - max), the write; the last two read the shared copy, so logits are read
// from device memory once. 16-byte packs where Vp is a whole number of packs and the buffers are aligned.
extern "C" __global__ void softmax_forward_kernel(floatX* probs, const floatX* logits, int N, int V, int Vp, int cached) {
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

// the max of row x's first V columns and the sum of exp(x - max) over them, in fp32, for the whole
// block (every thread gets both): one read of the row, each thread keeping a running max and a sum that
// it rescales whenever its max grows, then the block's partial sums are brought to the block's max.
// cache (V floatX of shared memory, or nullptr): where the row is copied as it is read.
__device__ __forceinline__ void row_max_sum(float& m, float& s, const floatX* x, int V, bool vec,
                                            floatX* cache = nullptr) {
    const int step = vec ? PACK : 1;
    m = -INFINITY;
    s = 0.0f;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, x + c, vec ? V - c : 1, vec);
        if (cache) store_floats(cache + c, v, vec ? V - c : 1, vec);   // floatX -> float -> floatX: exact
        float pm = -INFINITY;
        for (int k = 0; k < PACK; k++)
            if (k < step && c + k < V) pm = fmaxf(pm, v[k]);
        if (pm > m) {                 // the first time m is -inf and s 0: s stays 0
            s *= __expf(m - pm);
            m = pm;
        }
        for (int k = 0; k < PACK; k++)
            if (k < step && c + k < V) s += __expf(v[k] - m);
    }
    const float row_m = block_max(m);
    s = block_sum(s * __expf(m - row_m));   // a thread that saw no column: 0 * exp(-inf) = 0
    m = row_m;
}

extern "C" __global__ void crossentropy_forward_kernel(float* losses, float* lse, const floatX* logits,
                                                        const int* targets, int N, int V, int Vp) {
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    float m, s;
    row_max_sum(m, s, x, V, Vp % PACK == 0 && aligned16(logits));
    if (threadIdx.x == 0) {
        const float row_lse = m + logf(s);
        lse[row] = row_lse;
        losses[row] = row_lse - toF(x[targets[row]]);
    }
}

// one block per row, threads striding over its packs; softmax = exp(x - lse) with the forward's lse
extern "C" __global__ void crossentropy_softmax_backward_kernel(floatX* dlogits, const floatX* logits, const float* lse,
                                                                 const int* targets, float dloss, int N, int V,
                                                                 int Vp) {
    const long long row = blockIdx.x;
    const floatX* x = logits + row * Vp;
    floatX* d = dlogits + row * Vp;
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(dlogits);
    const int step = vec ? PACK : 1;
    const float row_lse = lse[row];
    const int target = targets[row];
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, x + c, vec ? Vp - c : 1, vec);
        for (int k = 0; k < PACK; k++)
            v[k] = c + k < V ? __expf(v[k] - row_lse) * dloss - (c + k == target ? dloss : 0.0f) : 0.0f;
        store_floats(d + c, v, vec ? Vp - c : 1, vec);
    }
}

// one block per row: row_max_sum's read of the row (into shared memory when `cached`, Vp floatX), the
// loss, then dlogits written from the shared copy (or from a second read of the row when not cached).
// The target's logit is read before the first barrier, so before any thread writes over the row.
extern "C" __global__ void crossentropy_forward_backward_kernel(float* losses, floatX* dlogits, const floatX* logits,
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
    row_max_sum(m, s, x, V, vec, cache);          // its barriers also complete the cached row
    const float row_lse = m + logf(s);
    if (threadIdx.x == 0) losses[row] = row_lse - target_logit;
    const floatX* src = cached ? cache : x;
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, src + c, min(step, V - c), vec);    // past V: not read, written as 0 below
        for (int k = 0; k < PACK; k++)
            v[k] = c + k < V ? __expf(v[k] - row_lse) * dloss - (c + k == target ? dloss : 0.0f) : 0.0f;
        store_floats(d + c, v, vec ? Vp - c : 1, vec);
    }
}
