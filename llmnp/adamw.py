"""AdamW over flat buffers, and the global gradient norm used for clipping.

update (t = 1, 2, ...; all in place):
    m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)              v_hat = v / (1 - beta2^t)
    param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)
Weight decay is decoupled (AdamW, not L2) and the model applies it only to the 2-D matrices
(params.DECAYED_PARAMETERS), as llm.c's GPU trainer and PyTorch's "dim >= 2" group do.
Not here: the learning-rate schedule (schedule.py).
"""
import numpy as np

CHUNK = 1 << 16   # elements per pass: the temporary stays in the L2 cache


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0, master=None):
    """One AdamW step on 1-D arrays of one length; grads are multiplied by grad_scale first (clipping).
    master: float32 master weights of low-precision (bf16) params: AdamW updates master, and params
    receive it rounded to their dtype."""
    if master is not None:
        adamw_update(master, grads, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale)
        params[...] = master
        return
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    tmp = np.empty(min(CHUNK, params.size), dtype=params.dtype)
    for i in range(0, params.size, CHUNK):
        p, g, mi, vi = params[i:i + CHUNK], grads[i:i + CHUNK], m[i:i + CHUNK], v[i:i + CHUNK]
        s = tmp[:p.size]
        np.multiply(g, grad_scale * (1.0 - beta1), out=s)
        mi *= beta1
        mi += s                                   # m = beta1 m + (1 - beta1) g
        np.multiply(g, g, out=s)
        s *= grad_scale * grad_scale * (1.0 - beta2)
        vi *= beta2
        vi += s                                   # v = beta2 v + (1 - beta2) g^2
        np.divide(vi, bc2, out=s)
        np.sqrt(s, out=s)
        s += eps                                  # sqrt(v_hat) + eps
        np.divide(mi, s, out=s)
        s *= 1.0 / bc1                            # m_hat / (sqrt(v_hat) + eps)
        if weight_decay != 0.0:
            s += weight_decay * p
        s *= lr
        p -= s


def global_norm_squared(grads):
    """sum(g^2) over a flat 1-D buffer: BLAS dot products per chunk, summed in float64."""
    total = 0.0
    for i in range(0, grads.size, CHUNK):
        g = grads[i:i + CHUNK]
        total += float(np.dot(g, g))
    return total
