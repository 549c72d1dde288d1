// common.cuh: the storage type and the small helpers every kernel file shares.
//
// floatX is how activations, weights and their gradients are stored: float, or __nv_bfloat16 when the
// launcher compiles with -DLLMNP_BF16=1. Arithmetic is always fp32: load with toF, store with fromF.
// Statistics (layernorm mean/rstd, attention lse, losses), AdamW state and master weights are float in
// both modes. Not here: any kernel.
#pragma once
#include <cuda_bf16.h>

#ifndef INFINITY                       // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

#if LLMNP_BF16
typedef __nv_bfloat16 floatX;
#else
typedef float floatX;
#endif

__device__ __forceinline__ float toF(float x) { return x; }
__device__ __forceinline__ float toF(__nv_bfloat16 x) { return __bfloat162float(x); }
#if LLMNP_BF16
__device__ __forceinline__ floatX fromF(float x) { return __float2bfloat16_rn(x); }
#else
__device__ __forceinline__ floatX fromF(float x) { return x; }
#endif

// Stochastic rounding to floatX (llmnp/adamw.py stochastic_round_bf16 is the reference, bit for bit):
// x rounds up with probability (the dropped 16 bits) / 2^16, so updates smaller than a bf16 step
// still move the weights on average. bits: 16 random bits, from rounding_bits(index, seed).
__device__ __forceinline__ unsigned rounding_bits(unsigned long long index, unsigned seed) {
    unsigned x = (unsigned)index ^ (unsigned)(index >> 32) * 0x9E3779B9u ^ seed;   // "lowbias32" mix
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x & 0xFFFFu;
}
#if LLMNP_BF16
__device__ __forceinline__ floatX fromF_stochastic(float x, unsigned bits) {
    if (isnan(x)) return __float2bfloat16_rn(x);
    const unsigned u = (__float_as_uint(x) + bits) & 0xFFFF0000u;   // carry into the kept bits = round up
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
}
#else
__device__ __forceinline__ floatX fromF_stochastic(float x, unsigned) { return x; }
#endif

// 16-byte packs: PACK elements of floatX moved with one load or store instruction
#define PACK (16 / (int)sizeof(floatX))
struct __align__(16) x128 { floatX v[16 / sizeof(floatX)]; };

__device__ __forceinline__ x128 load128(const floatX* p) { return *reinterpret_cast<const x128*>(p); }
__device__ __forceinline__ void store128(floatX* p, x128 x) { *reinterpret_cast<x128*>(p) = x; }
// store128 to global memory with the streaming hint (st.global.cs: written once, not read again soon);
// always one 16-byte store, where nvcc may split a plain store128 into 4-byte ones
__device__ __forceinline__ void store128_streaming(floatX* p, x128 x) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&x));
}
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<size_t>(p) & 15) == 0; }

// PACK consecutive elements at p as floats: one 16-byte load when vec (16-byte aligned) and a whole
// pack is there, else element by element, `avail` of them (the rest read as 0)
__device__ __forceinline__ void load_floats(float (&f)[PACK], const floatX* p, int avail, bool vec) {
    if (vec && avail >= PACK) {
        const x128 v = load128(p);
        for (int k = 0; k < PACK; k++) f[k] = toF(v.v[k]);
    } else {
        for (int k = 0; k < PACK; k++) f[k] = k < avail ? toF(p[k]) : 0.0f;
    }
}

// the store to match: `avail` elements (at most PACK)
__device__ __forceinline__ void store_floats(floatX* p, const float (&f)[PACK], int avail, bool vec) {
    if (vec && avail >= PACK) {
        x128 v;
        for (int k = 0; k < PACK; k++) v.v[k] = fromF(f[k]);
        store128(p, v);
    } else {
        for (int k = 0; k < PACK && k < avail; k++) p[k] = fromF(f[k]);
    }
}

// a shared-memory address as the 32-bit offset the shared-memory instructions take
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// cp.async of `bytes` (4 or 16) from global to shared; src_ok false writes zeros (and reads nothing)
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool src_ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(src_ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool src_ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(src_ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

#define LOG2E 1.4426950408889634f

// 2^x in one instruction (MUFU.EX2, results below 2^-126 flushed to 0). exp2f keeps those results, at
// three more instructions per call, and softmax exponentials are what the attention and classifier
// kernels issue most.
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();                  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

// the end of a column sum over rows, for a block of (32, 8) threads where thread (x, y) has summed
// acc, PACK consecutive columns (blockIdx.x * 32 + x) * PACK.. over some rows: the block's 8 row
// groups added up, one row of column sums written to partial[blockIdx.y, :OC] (OC columns in all)
__device__ __forceinline__ void store_column_partials(float* partial, const float (&acc)[PACK], int OC) {
    __shared__ float sums[8][32 * PACK];
    for (int k = 0; k < PACK; k++) sums[threadIdx.y][threadIdx.x * PACK + k] = acc[k];
    __syncthreads();
    for (int c = threadIdx.y * 32 + threadIdx.x; c < 32 * PACK; c += 8 * 32) {   // the block's columns
        const int oc = blockIdx.x * 32 * PACK + c;
        if (oc >= OC) continue;
        float sum = 0.0f;
        for (int y = 0; y < 8; y++) sum += sums[y][c];
        partial[(long long)blockIdx.y * OC + oc] = sum;
    }
}

// the sum over R rows of one column of a float matrix (row stride M), the column starting at `column`
// (not read where `valid` is false), for a block of (32, 32) threads, each column's 32 threads in x:
// thread (x, y) adds rows y, y + 32, ..., then the block adds its 32 row groups in order (the same order
// every run); threads with threadIdx.y == 0 get the column's sum, the others 0. Every thread calls it.
__device__ __forceinline__ float column_sum(const float* column, int R, long long M, bool valid) {
    __shared__ float sums[32][33];                // padded: the column reads hit 32 banks
    float sum = 0.0f;
    if (valid) {
#pragma unroll 8
        for (int r = threadIdx.y; r < R; r += 32) sum += column[r * M];   // 8 loads in flight
    }
    sums[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    sum = 0.0f;
    if (threadIdx.y == 0)
        for (int y = 0; y < 32; y++) sum += sums[y][threadIdx.x];
    return sum;
}

// max over the whole block, likewise
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : -INFINITY;
    return warp_max(v);
}
