"""AdamW over flat buffers, and the global gradient norm used for clipping.

update (t = 1, 2, ...; all in place):
    m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)              v_hat = v / (1 - beta2^t)
    param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)
Weight decay is decoupled (AdamW, not L2) and the model applies it only to the 2-D matrices
(params.DECAYED_PARAMETERS), as llm.c's GPU trainer and PyTorch's "dim >= 2" group do.

On the CPU the buffers hold 124M floats at d12, so the update is written for memory traffic: each
thread takes one part of the buffers and walks it in cache-sized blocks, doing every operation of the
update in place on a block before moving on, so param, grad, m and v are each read and written once
per step and no temporary is larger than one block (parallel.py).
Not here: the learning-rate schedule (schedule.py).
"""
import math

import numpy as np

from llmnp.parallel import BLOCK, blocks, parallel_for

BETA1, BETA2, EPS = 0.9, 0.95, 1e-8      # llm.c's (and GPT-2 training's) AdamW constants, used everywhere

CHUNK = 1 << 16                  # elements per block (tests cross block boundaries with it)
NORM_CHUNK = 1 << 20             # elements per dot product in the norm (OpenBLAS threads each one)


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0, master=None,
                 seed=0, offset=0):
    """One AdamW step on 1-D arrays of one length; grads are multiplied by grad_scale first (clipping).
    master: float32 master weights of low-precision (bf16) params: AdamW updates master, and params
    receive it rounded stochastically (stochastic_round_bf16 with seed; params[i] is parameter
    offset + i of the flat buffer). The CPU trains in float32, where no rounding happens."""
    if master is not None:
        adamw_update(master, grads, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale)
        params[...] = stochastic_round_bf16(master, seed, offset) if params.dtype.itemsize == 2 else master
        return
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    # the bias corrections folded into two scalars:
    # lr * m_hat / (sqrt(v_hat) + eps) = step_size * m / (sqrt(v) + eps_hat)
    step_size = lr * math.sqrt(bc2) / bc1
    eps_hat = eps * math.sqrt(bc2)
    decay = 1.0 - lr * weight_decay   # decoupled weight decay: param -= lr * weight_decay * param

    def update_part(lo, hi):
        tmp = np.empty(min(CHUNK, hi - lo), dtype=params.dtype)
        for i, j in blocks(lo, hi, CHUNK):
            p, g, mi, vi, s = params[i:j], grads[i:j], m[i:j], v[i:j], tmp[:j - i]
            np.multiply(g, grad_scale * (1.0 - beta1), out=s)
            mi *= beta1
            mi += s                                          # m = beta1 m + (1 - beta1) g
            np.multiply(g, g, out=s)
            s *= grad_scale * grad_scale * (1.0 - beta2)
            vi *= beta2
            vi += s                                          # v = beta2 v + (1 - beta2) g^2
            np.sqrt(vi, out=s)
            s += eps_hat
            np.divide(mi, s, out=s)
            s *= step_size                                   # lr * m_hat / (sqrt(v_hat) + eps)
            if weight_decay != 0.0:
                p *= decay
            p -= s

    parallel_for(params.size, update_part)


def global_norm_squared(grads):
    """sum(g^2) over a flat 1-D buffer: BLAS dot products per chunk, summed in float64."""
    total = 0.0
    for i, j in blocks(0, grads.size, NORM_CHUNK):
        g = grads[i:j]
        total += float(np.dot(g, g))
    return total


def rounding_bits(index, seed):
    """16 random bits per index (uint64 array) for a seed: the "lowbias32" integer hash, as common.cuh."""
    with np.errstate(over="ignore"):
        x = (index.astype(np.uint32) ^ ((index >> np.uint64(32)).astype(np.uint32) * np.uint32(0x9E3779B9))
             ^ np.uint32(seed))
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x & np.uint32(0xFFFF)


def stochastic_round_bf16(x, seed, offset=0):
    """float32 x -> bfloat16, rounding up with probability (dropped 16 bits) / 2^16, so E[result] = x:
    an AdamW step smaller than half a bf16 step survives on average instead of always vanishing.
    Element i draws rounding_bits(offset + i, seed). NaN rounds to nearest."""
    import ml_dtypes
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = np.arange(offset, offset + x.size, dtype=np.uint64).reshape(x.shape)
    bits = ((x.view(np.uint32).astype(np.uint64) + rounding_bits(index, seed)) >> np.uint64(16)).astype(np.uint16)
    out = bits.view(ml_dtypes.bfloat16)
    nan = np.isnan(x)
    out[nan] = x[nan].astype(ml_dtypes.bfloat16)
    return out
