// Encoder: token embedding plus position embedding (llmnp/encoder.py is the reference).
//
// forward:  out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
// backward: dwpe[t,:] += sum_b dout[b,t,:];  dwte[v,:] += sum of dout[b,t,:] over the positions holding
//           token v. Both accumulate. dwte is summed per token over positions sorted by token (the
//           launcher sorts), so no atomics and the result is deterministic.
// Shapes: B batch, T time, C channels, N = B*T positions; inp int32 (B,T), wte (Vp,C), wpe (maxT,C).
#include "common.cuh"

// one thread per PACK-wide chunk of an output row: one 16-byte load of each input and one store where
// C % PACK == 0 and the arrays are 16-byte aligned (every row then is), else element by element
extern "C" __global__ void encoder_forward_kernel(floatX* out, const int* inp, const floatX* wte,
                                                   const floatX* wpe, int N, int T, int C) {
    const int chunks = (C + PACK - 1) / PACK;                     // per row
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * chunks) return;
    const int n = (int)(idx / chunks), c = (int)(idx % chunks) * PACK, t = n % T;
    const bool vec = C % PACK == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe);
    float e[PACK], p[PACK];
    load_floats(e, wte + (long long)inp[n] * C + c, C - c, vec);
    load_floats(p, wpe + (long long)t * C + c, C - c, vec);
    for (int k = 0; k < PACK; k++) e[k] += p[k];
    store_floats(out + (long long)n * C + c, e, C - c, vec);
}

// dwpe: one thread per (t, c), summing over the batch
extern "C" __global__ void encoder_backward_dwpe(floatX* dwpe, const floatX* dout, int B, int T, int C) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * C) return;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += toF(dout[(long long)b * T * C + idx]);
    dwpe[idx] = fromF(toF(dwpe[idx]) + sum);
}

// dwte: one block per run of equal tokens in `order` (positions sorted by token); blocks that do not
// start a run exit at once. Threads stride over the row in PACK-wide chunks (16-byte loads as in the forward).
extern "C" __global__ void encoder_backward_dwte(floatX* dwte, const floatX* dout, const int* inp,
                                                    const long long* order, int N, int C) {
    const int i = blockIdx.x;
    const int token = inp[order[i]];
    if (i > 0 && inp[order[i - 1]] == token) return;
    int end = i + 1;
    while (end < N && inp[order[end]] == token) end++;
    const bool vec = C % PACK == 0 && aligned16(dwte) && aligned16(dout);
    floatX* row = dwte + (long long)token * C;
    for (int c = threadIdx.x * PACK; c < C; c += blockDim.x * PACK) {
        float sum[PACK] = {}, d[PACK];
        for (int j = i; j < end; j++) {
            load_floats(d, dout + order[j] * C + c, C - c, vec);
            for (int k = 0; k < PACK; k++) sum[k] += d[k];
        }
        load_floats(d, row + c, C - c, vec);
        for (int k = 0; k < PACK; k++) d[k] += sum[k];
        store_floats(row + c, d, C - c, vec);
    }
}
