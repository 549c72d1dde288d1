// Encoder: token embedding plus position embedding (llmnp/encoder.py is the reference).
//
// forward:  out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
// backward: dwpe[t,:] += sum_b dout[b,t,:];  dwte[v,:] += sum of dout[b,t,:] over the positions holding
//           token v. Both accumulate. dwte is summed per token over positions sorted by token (the
//           launcher sorts), so no atomics and the result is deterministic.
// Shapes: B batch, T time, C channels, N = B*T positions; inp int32 (B,T), wte (Vp,C), wpe (maxT,C).
#include "common.cuh"

// one thread per output element
extern "C" __global__ void encoder_forward_kernel(floatX* out, const int* inp, const floatX* wte,
                                                   const floatX* wpe, int N, int T, int C) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)N * C) return;
    const int n = (int)(idx / C), c = (int)(idx % C), t = n % T;
    out[idx] = fromF(toF(wte[(long long)inp[n] * C + c]) + toF(wpe[(long long)t * C + c]));
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
// start a run exit at once. Threads stride over the channels.
extern "C" __global__ void encoder_backward_dwte(floatX* dwte, const floatX* dout, const int* inp,
                                                    const long long* order, int N, int C) {
    const int i = blockIdx.x;
    const int token = inp[order[i]];
    if (i > 0 && inp[order[i - 1]] == token) return;
    int end = i + 1;
    while (end < N && inp[order[end]] == token) end++;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sum = 0.0f;
        for (int j = i; j < end; j++) sum += toF(dout[order[j] * C + c]);
        dwte[(long long)token * C + c] = fromF(toF(dwte[(long long)token * C + c]) + sum);
    }
}
