// Decoding with a key/value cache: the three steps of one new position per row that the full forward
// pass does not have (llmnp/generate.py holds their NumPy references and states the rules).
//
// encoder_step: x[b,:] = wte[tok[b],:] + wpe[pos[b],:]: each row at its own position
// attention_step: row b's new key and value go into the cache at pos[b]; its query attends over the
//           cache's positions 0..pos[b] (all earlier or itself: no mask); softmax in fp32
// sample_step: per row, the next token and the next step's input. A row still inside its prompt takes
//           the prompt's next token; otherwise it samples (greedy at temperature 0, else top-k, then
//           top-p, from the uniform u = mix64(key[b] + (pos[b]+1) * GOLDEN)) and runs the sample next,
//           unless it is EOT or the cache is full: then the row is done.
// Every size that changes from step to step (tokens, positions) is read from device memory, so one
// step is the same launches every time: a CUDA graph captures it once and replays it.
// Shapes: B rows, C channels, NH heads, hs = C/NH, Tc cache positions, Vp padded vocab, V vocab;
// kv (2,B,NH,Tc,hs) one layer's keys | values, qkv (B,3C), x/out (B,C), logits (B,Vp), prompt (B,Tc).
#include "common.cuh"

#define GOLDEN 0x9E3779B97F4A7C15ull
#ifndef HS
#define HS 64                            // the head size: a -D constant from attention_step's launcher
#endif

// one thread per output element
extern "C" __global__ void encoder_step_kernel(floatX* x, const int* tok, const int* pos, const floatX* wte,
                                                const floatX* wpe, int B, int C) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * C) return;
    const int b = idx / C, c = idx % C;
    x[idx] = fromF(toF(wte[(long long)tok[b] * C + c]) + toF(wpe[(long long)pos[b] * C + c]));
}

// one block per (row, head); scores and probabilities in shared memory (Tc floats)
extern "C" __global__ void attention_step_kernel(floatX* out, floatX* kv, const floatX* qkv, const int* pos,
                                                  int B, int NH, int Tc) {
    extern __shared__ float att[];                          // (Tc,)
    __shared__ float q[HS];
    const int b = blockIdx.x / NH, h = blockIdx.x % NH, C = NH * HS, t = pos[b];
    floatX* k = kv + ((long long)b * NH + h) * Tc * HS;                   // (Tc,hs) of this row and head
    floatX* v = k + (long long)B * NH * Tc * HS;
    const floatX* row = qkv + (long long)b * 3 * C + h * HS;              // q | k | v of the new position
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        q[d] = toF(row[d]);
        k[(long long)t * HS + d] = row[C + d];
        v[(long long)t * HS + d] = row[2 * C + d];
    }
    __syncthreads();
    const float scale = rsqrtf((float)HS);
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {                  // scores of positions 0..t
        float s = 0.0f;
        for (int d = 0; d < HS; d++) s += q[d] * toF(k[(long long)j * HS + d]);
        att[j] = s * scale;
        m = fmaxf(m, att[j]);
    }
    m = block_max(m);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) {
        att[j] = expf(att[j] - m);
        sum += att[j];
    }
    sum = block_sum(sum);                                   // its __syncthreads also publishes att
    // out[d] = sum_j att[j] v[j,d]: thread (g, d) sums the positions j = g, g + G, ...; then the G groups
    __shared__ float acc[1024];
    const int G = blockDim.x / HS, g = threadIdx.x / HS, d = threadIdx.x % HS;
    float o = 0.0f;
    if (g < G)
        for (int j = g; j <= t; j += G) o += att[j] * toF(v[(long long)j * HS + d]);
    acc[threadIdx.x] = o;
    __syncthreads();
    if (threadIdx.x < HS) {
        float total = 0.0f;
        for (int k2 = 0; k2 < G; k2++) total += acc[k2 * HS + threadIdx.x];
        out[(long long)b * C + h * HS + threadIdx.x] = fromF(total / sum);
    }
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {      // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// a float's bits as an unsigned key in the same order as the floats
__device__ __forceinline__ unsigned int order_key(float f) {
    const unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float block_count(float n) { return block_sum(n); }

// one block of 1024 threads per row
extern "C" __global__ void sample_step_kernel(int* out, int* tok, int* pos, int* done, const floatX* logits,
                                               const int* prompt, const int* prompt_len,
                                               const unsigned long long* key, int Vp, int V, int Tc,
                                               float temperature, int top_k, float top_p, int eot) {
    const int b = blockIdx.x, tid = threadIdx.x, n = blockDim.x;
    const int p = pos[b], next = p + 1;
    if (done[b] || next < prompt_len[b]) {                  // finished, or still reading the prompt
        if (tid == 0) {
            out[b] = -1;
            if (!done[b]) { tok[b] = prompt[(long long)b * Tc + next]; pos[b] = next; }
        }
        return;
    }
    const floatX* row = logits + (long long)b * Vp;
    __shared__ int pick;
    if (temperature == 0.0f) {                              // greedy: the first index of the largest logit
        float best = -INFINITY;
        int arg = V;
        for (int i = tid; i < V; i += n) {
            const float z = toF(row[i]);
            if (z > best) { best = z; arg = i; }
        }
        const float m = block_max(best);
        if (tid == 0) pick = V;
        __syncthreads();
        if (best == m) atomicMin(&pick, arg);
        __syncthreads();
    } else {
        const float inv_t = 1.0f / temperature;
        float m = -INFINITY;
        for (int i = tid; i < V; i += n) m = fmaxf(m, toF(row[i]) * inv_t);
        m = block_max(m);
        // top-k: the largest key `lo` with at least k logits at or above it (k >= V: all)
        unsigned int lo = 0u;
        if (top_k > 0 && top_k < V) {
            unsigned int hi = order_key(m);
            while (lo < hi) {
                const unsigned int mid = lo + (hi - lo + 1u) / 2u;
                float c = 0.0f;
                for (int i = tid; i < V; i += n) c += order_key(toF(row[i]) * inv_t) >= mid;
                if (block_count(c) >= (float)top_k) lo = mid; else hi = mid - 1u;
            }
        }
        // top-p: the largest key >= lo whose tail holds at least top_p of the kept mass
        if (top_p < 1.0f) {
            float total = 0.0f;
            for (int i = tid; i < V; i += n) {
                const float z = toF(row[i]) * inv_t;
                if (order_key(z) >= lo) total += expf(z - m);
            }
            total = block_sum(total);
            unsigned int hi = order_key(m);
            while (lo < hi) {
                const unsigned int mid = lo + (hi - lo + 1u) / 2u;
                float mass = 0.0f;
                for (int i = tid; i < V; i += n) {
                    const float z = toF(row[i]) * inv_t;
                    if (order_key(z) >= mid) mass += expf(z - m);
                }
                if (block_sum(mass) >= top_p * total) lo = mid; else hi = mid - 1u;
            }
        }
        // the draw: thread tid owns the indices [tid*per, (tid+1)*per); a scan of the owners' masses
        // finds the one whose range holds u * total, which then walks its range (index order, as the CPU)
        const int per = (V + n - 1) / n, start = tid * per, end = min(V, start + per);
        float own = 0.0f;
        for (int i = start; i < end; i++) {
            const float z = toF(row[i]) * inv_t;
            if (order_key(z) >= lo) own += expf(z - m);
        }
        __shared__ float scan[1024];
        scan[tid] = own;
        __syncthreads();
        for (int o = 1; o < n; o <<= 1) {                   // inclusive prefix sums, Hillis-Steele
            const float add = tid >= o ? scan[tid - o] : 0.0f;
            __syncthreads();
            scan[tid] += add;
            __syncthreads();
        }
        const unsigned long long r = mix64(key[b] + (unsigned long long)next * GOLDEN);
        const float target = (float)((double)(r >> 11) * (1.0 / 9007199254740992.0)) * scan[n - 1];
        if (tid == 0) pick = -1;
        __syncthreads();
        const float before = scan[tid] - own;
        if (own > 0.0f && before <= target && target < scan[tid]) {
            float run = before;
            int found = -1, last = -1;
            for (int i = start; i < end && found < 0; i++) {
                const float z = toF(row[i]) * inv_t;
                if (order_key(z) < lo) continue;
                last = i;
                run += expf(z - m);
                if (run > target) found = i;
            }
            atomicMax(&pick, found >= 0 ? found : last);
        }
        __syncthreads();
        if (pick < 0) {                                     // rounding put the target past the end: the last kept
            if (own > 0.0f) {
                int last = -1;
                for (int i = start; i < end; i++) if (order_key(toF(row[i]) * inv_t) >= lo) last = i;
                atomicMax(&pick, last);
            }
            __syncthreads();
        }
    }
    if (tid == 0) {
        const int s = pick;
        out[b] = s;
        if (s == eot || next >= Tc) done[b] = 1;
        else { tok[b] = s; pos[b] = next; }
    }
}
