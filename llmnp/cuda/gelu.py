"""GELU launchers, and GELU with the bias of the product before it (gelu.cu; llmnp/gelu.py is the
reference and states the rules).

Shapes: any for gelu; bias_gelu: N = B*T rows (any leading shape), OC columns, bias (OC,).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel, num_sms, pack, scratch


def gelu_forward(out, inp):
    """out <- gelu(inp)."""
    check(out.dtype, out=out, inp=inp)
    block_size = 256
    k = kernel("gelu", "gelu_forward_kernel", out.dtype)
    k((blocks(out.size, block_size * pack(out.dtype)),), (block_size,), (out, inp, np.int64(out.size)))


def gelu_backward(dinp, inp, dout):
    """dinp <- dout * gelu'(inp), overwritten."""
    check(dinp.dtype, dinp=dinp, inp=inp, dout=dout)
    block_size = 256
    k = kernel("gelu", "gelu_backward_kernel", dinp.dtype)
    k((blocks(dinp.size, block_size * pack(dinp.dtype)),), (block_size,), (dinp, inp, dout, np.int64(dinp.size)))


def bias_gelu_forward(out, inp, bias):
    """out (B,T,OC) <- gelu(inp + bias), inp (B,T,OC) a product without its bias (OC,)."""
    check(out.dtype, out=out, inp=inp, bias=bias)
    block_size = 256
    k = kernel("gelu", "bias_gelu_forward_kernel", out.dtype)
    k((blocks(out.size, block_size * pack(out.dtype)),), (block_size,),
      (out, inp, bias, np.int64(out.size), np.int32(bias.size)))


def bias_gelu_backward(dinp, dbias, dout, inp, bias):
    """dinp (B,T,OC) <- dout * gelu'(inp + bias), overwritten; adds into dbias (OC,) dinp summed over (B,T)."""
    OC = bias.size
    N = inp.size // OC
    check(dinp.dtype, dinp=dinp, dbias=dbias, dout=dout, inp=inp, bias=bias)
    col_blocks = blocks(OC, 32 * pack(dinp.dtype))
    R = max(1, min(blocks(N, 64), blocks(4 * num_sms(), col_blocks)))     # row ranges: ~4 blocks per SM
    partial = scratch("bias_gelu_partial", R * OC)
    k = kernel("gelu", "bias_gelu_backward_kernel", dinp.dtype)
    k((col_blocks, R), (32, 8), (dinp, partial, dout, inp, bias, np.int32(N), np.int32(OC)))
    k = kernel("matmul", "matmul_backward_dbias_total", dinp.dtype)          # dbias += the partials' column sums
    k((blocks(OC, 256),), (256,), (dbias, partial, np.int32(R), np.int32(OC)))
