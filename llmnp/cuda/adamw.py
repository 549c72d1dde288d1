"""AdamW and the global gradient norm (adamw.cu, global_norm.cu; llmnp/adamw.py is the reference).

m and v are float32. With bf16 storage, pass master: the float32 master weights are what AdamW
updates, and params receive them rounded to bf16 stochastically (adamw.py stochastic_round_bf16).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, cupy, kernel, num_sms, pack, scratch


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0, master=None,
                 seed=0, offset=0):
    """One AdamW step on 1-D arrays of one length; grads are multiplied by grad_scale first (clipping).
    bf16 params are rounded stochastically with `seed`, params[i] being parameter offset + i."""
    n = params.size
    check(params.dtype, params=params, grads=grads)
    check(np.float32, m=m, v=v)
    block_size = 512
    scalars = (np.float32(lr), np.float32(beta1), np.float32(beta2), np.float32(1.0 - beta1 ** t),
               np.float32(1.0 - beta2 ** t), np.float32(eps), np.float32(weight_decay), np.float32(grad_scale))
    rounding = (np.uint32(seed), np.int64(offset))
    if master is None:
        k = kernel("adamw", "adamw_update_inplace", params.dtype)
        k((blocks(n, block_size),), (block_size,), (params, grads, m, v, np.int64(n)) + scalars + rounding)
    else:
        check(np.float32, master=master)
        k = kernel("adamw", "adamw_update_master", params.dtype)
        k((blocks(n, block_size),), (block_size,), (params, master, grads, m, v, np.int64(n)) + scalars + rounding)


def global_norm_squared(grads):
    """sum(g^2) over a flat 1-D buffer: a 0-d float64 device array (float() reads it, and syncs)."""
    check(grads.dtype, grads=grads)
    block_size = 512
    grid = min(blocks(grads.size, block_size * pack(grads.dtype)), 4 * num_sms())   # a PACK per thread per pass
    partial = scratch("global_norm_partial", grid)
    out = cupy().empty((), dtype=np.float64)
    kernel("global_norm", "global_norm_squared_partial", grads.dtype)((grid,), (block_size,),
                                                                      (partial, grads, np.int64(grads.size)))
    kernel("global_norm", "global_norm_squared_total", grads.dtype)((1,), (1024,), (out, partial, np.int32(grid)))
    return out
