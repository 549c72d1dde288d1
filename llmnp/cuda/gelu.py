"""GELU launchers (gelu.cu; llmnp/gelu.py is the reference and states the rules). Shapes: any.
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel, pack


def gelu_forward(out, inp):
    """out <- gelu(inp)."""
    check(out.dtype, out=out, inp=inp)
    block_size = 256
    k = kernel("gelu", "gelu_forward_kernel", out.dtype)
    k((blocks(out.size, block_size * pack(out.dtype)),), (block_size,), (out, inp, np.int64(out.size)))


def gelu_backward(dinp, inp, dout):
    """dinp <- dout * gelu'(inp), overwritten; dinp may be dout (in place)."""
    check(dinp.dtype, dinp=dinp, inp=inp, dout=dout)
    block_size = 256
    k = kernel("gelu", "gelu_backward_kernel", dinp.dtype)
    k((blocks(dinp.size, block_size * pack(dinp.dtype)),), (block_size,), (dinp, inp, dout, np.int64(dinp.size)))
