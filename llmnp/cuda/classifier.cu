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
//           device memory into shared memory (cp.async), the max, sum and dlogits from there; no lse kept.
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
// copy (V floatX), unless null: the row written there as it is read (floatX -> float -> floatX: exact).
__device__ __forceinline__ void row_max_sum(float& m, float& s, const floatX* x, int V, bool vec,
                                            floatX* copy = nullptr) {
    const int step = vec ? PACK : 1;
    m = -INFINITY;
    s = 0.0f;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        load_floats(v, x + c, vec ? V - c : 1, vec);
        if (copy) store_floats(copy + c, v, vec ? V - c : 1, vec);
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

// the row src (n floatX) into shared memory dst, this thread's share of it: cp.async 16-byte copies, all in
// flight at once, nothing held in registers (vec: src 16-byte aligned, n a whole number of packs); else
// element by element, plain loads and stores. The caller commits the group and waits for it.
__device__ __forceinline__ void copy_row_async(floatX* dst, const floatX* src, int n, bool vec) {
    if (vec) {
        for (int c = threadIdx.x * PACK; c < n; c += blockDim.x * PACK) cp_async16(dst + c, src + c, true);
    } else {
        for (int c = threadIdx.x; c < n; c += blockDim.x) dst[c] = src[c];
    }
}

// the max of this thread's columns of row x below V: its 16-byte packs (vec) or single columns, as
// crossentropy_row and crossentropy_row_shared take them (-inf where it has none)
__device__ __forceinline__ float thread_max(const floatX* x, int V, bool vec) {
    const int step = vec ? PACK : 1;
    float m = -INFINITY;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        const int n = min(step, V - c);
        load_floats(v, x + c, n, vec);
        for (int k = 0; k < PACK; k++)
            if (n == PACK || k < n) m = fmaxf(m, v[k]);
    }
    return m;
}

// The loss and dlogits of one row x (Vp floatX, in shared memory or not) by the whole block, in three
// reads of x: the max, the sum of exp(x - max), then dlogits written to d, with exp(x - lse) * dloss as
// exp2(x log2(e) + log2(dloss) - lse log2(e)): one multiply-add and one exp2 per logit. Each thread takes
// 16-byte packs (vec) or single columns (step); n of a pack lie below V (all PACK but in the last).
__device__ __forceinline__ void crossentropy_row(float* loss, floatX* d, const floatX* x, int target,
                                                 float target_logit, float dloss, int V, int Vp, bool vec) {
    const int step = vec ? PACK : 1;
    const float m = block_max(thread_max(x, V, vec));
    float s = 0.0f;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        const int n = min(step, V - c);
        load_floats(v, x + c, n, vec);
        for (int k = 0; k < PACK; k++)
            if (n == PACK || k < n) s += exp2_ftz((v[k] - m) * LOG2E);
    }
    const float lse = m + logf(block_sum(s));
    if (threadIdx.x == 0) *loss = lse - target_logit;
    const float shift = log2f(dloss) - lse * LOG2E;
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        const int n = max(0, min(step, V - c));                    // past V: not read, written as 0
        load_floats(v, x + c, n, vec);
        for (int k = 0; k < PACK; k++) v[k] = n == PACK || k < n ? exp2_ftz(fmaf(v[k], LOG2E, shift)) : 0.0f;
        if (target >= c && target < c + step)                      // the target's pack: once a row
            for (int k = 0; k < PACK; k++) v[k] -= c + k == target ? dloss : 0.0f;
        if (vec) {
            x128 o;
            for (int k = 0; k < PACK; k++) o.v[k] = fromF(v[k]);
            store128_streaming(d + c, o);
        } else {
            store_floats(d + c, v, 1, false);
        }
    }
}

// The loss and dlogits of a row held in shared memory (x, Vp floatX; written over), by the whole block,
// with one exp per logit: each thread takes the max m of its own columns, writes e = exp(x - m) over
// them as it sums them, the block brings the sums to the row's max, and dlogits = e * exp(m - max) *
// dloss / sum are written from the e's (in bf16 the e's are rounded once more than crossentropy_row's
// exp(x - lse) * dloss). Each thread only ever touches its own packs of x, the copy_row_async share:
// once it has written a pack of dlogits, it starts copying that pack of the row `next` (unless null)
// into x, so the next row comes in while this one goes out, with no barrier between them.
__device__ __forceinline__ void crossentropy_row_shared(float* loss, floatX* d, floatX* x, const floatX* next,
                                                        int target, float target_logit, float dloss, int V, int Vp,
                                                        bool vec) {
    const int step = vec ? PACK : 1;
    const float m = thread_max(x, V, vec);
    const float shift = fmaxf(m, -3.0e38f) * LOG2E;               // finite: a column of -inf gives e = 0
    float s = 0.0f;
    for (int c = threadIdx.x * step; c < V; c += blockDim.x * step) {
        float v[PACK];
        const int n = min(step, V - c);
        load_floats(v, x + c, n, vec);
        for (int k = 0; k < PACK; k++) {
            v[k] = n == PACK || k < n ? exp2_ftz(fmaf(v[k], LOG2E, -shift)) : 0.0f;
            s += v[k];
        }
        store_floats(x + c, v, n, vec);
    }
    const float row_m = block_max(m);
    const float to_row = exp2_ftz((m - row_m) * LOG2E);          // a thread that saw no column: 0
    const float sum = block_sum(s * to_row);
    if (threadIdx.x == 0) *loss = row_m + logf(sum) - target_logit;
    const float scale = to_row * dloss / sum;
    for (int c = threadIdx.x * step; c < Vp; c += blockDim.x * step) {
        float v[PACK];
        const int n = max(0, min(step, V - c));                    // past V: not read, written as 0
        load_floats(v, x + c, n, vec);
        for (int k = 0; k < PACK; k++) v[k] = n == PACK || k < n ? v[k] * scale : 0.0f;
        if (target >= c && target < c + step)                      // the target's pack: once a row
            for (int k = 0; k < PACK; k++) v[k] -= c + k == target ? dloss : 0.0f;
        if (vec) {
            x128 o;
            for (int k = 0; k < PACK; k++) o.v[k] = fromF(v[k]);
            store128_streaming(d + c, o);                          // o needs the pack read: the copy below
            if (next != nullptr) cp_async16(x + c, next + c, true);   // can no longer overtake that read
        } else {
            store_floats(d + c, v, 1, false);
            if (next != nullptr) x[c] = next[c];
        }
    }
}

// The loss and dlogits in one kernel (training's classifier). Blocks stride over the rows (two blocks per
// SM at GPT-2's Vp in bf16). Cached (the row's Vp floatX fit in shared memory): each row is copied in
// with every thread's 16-byte copies in flight at once (cp.async), while the block's previous row is
// written out (crossentropy_row_shared), so device memory sees one read and one write of each row; not
// cached, crossentropy_row reads the row from device memory three times. The target's logit is read
// before the row is written over (dlogits may be logits).
extern "C" __global__ void crossentropy_forward_backward_kernel(float* losses, floatX* dlogits, const floatX* logits,
                                                                 const int* targets, float dloss, int N, int V,
                                                                 int Vp, int cached) {
    extern __shared__ __align__(16) unsigned char row_cache[];
    floatX* cache = reinterpret_cast<floatX*>(row_cache);         // (Vp,) when cached
    const bool vec = Vp % PACK == 0 && aligned16(logits) && aligned16(dlogits);
    if (cached && blockIdx.x < N) {
        copy_row_async(cache, logits + blockIdx.x * (long long)Vp, Vp, vec);
        cp_async_commit();
    }
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const floatX* x = logits + row * Vp;
        const int target = targets[row];
        const float target_logit = toF(x[target]);
        if (cached) {
            cp_async_wait<0>();                 // this thread's packs of the row are in: all it reads
            const floatX* next = row + gridDim.x < N ? x + gridDim.x * (long long)Vp : nullptr;
            crossentropy_row_shared(losses + row, dlogits + row * Vp, cache, next, target, target_logit, dloss, V,
                                    Vp, vec);
            cp_async_commit();
        } else {
            crossentropy_row(losses + row, dlogits + row * Vp, x, target, target_logit, dloss, V, Vp, vec);
        }
    }
}
