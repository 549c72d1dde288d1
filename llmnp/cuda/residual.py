"""Residual launchers (residual.cu; llmnp/residual.py is the reference and states the rules)."""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel, pack


def residual_forward(out, inp1, inp2):
    """out = inp1 + inp2 (out may be either input)."""
    check(out.dtype, out=out, inp1=inp1, inp2=inp2)
    block_size = 256
    k = kernel("residual", "residual_forward_kernel", out.dtype)
    k((blocks(out.size, block_size * pack(out.dtype)),), (block_size,), (out, inp1, inp2, np.int64(out.size)))


def residual_backward(dinp1, dinp2, dout):
    """dinp1 += dout, dinp2 += dout."""
    check(dout.dtype, dinp1=dinp1, dinp2=dinp2, dout=dout)
    block_size = 256
    k = kernel("residual", "residual_backward_kernel", dout.dtype)
    k((blocks(dout.size, block_size * pack(dout.dtype)),), (block_size,), (dinp1, dinp2, dout, np.int64(dout.size)))
