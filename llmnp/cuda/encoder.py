"""Encoder launchers (encoder.cu; llmnp/encoder.py is the reference and states the rules).

Shapes: B batch, T time, C channels, Vp padded vocab, maxT positions; inp int32 (B,T).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, cupy, kernel, pack


def encoder_forward(out, inp, wte, wpe):
    """out (B,T,C) = wte[inp] + wpe[:T]."""
    B, T, C = out.shape
    check(out.dtype, out=out, wte=wte, wpe=wpe)
    check(np.int32, inp=inp)
    block_size = 256
    k = kernel("encoder", "encoder_forward_kernel", out.dtype)
    k((blocks(B * T * blocks(C, pack(out.dtype)), block_size),), (block_size,),     # a thread per PACK of a row
      (out, inp, wte, wpe, np.int32(B * T), np.int32(T), np.int32(C)))


def encoder_backward(dwte, dwpe, dout, inp):
    """Adds into dwte (Vp,C) and dwpe (maxT,C) from dout (B,T,C)."""
    B, T, C = dout.shape
    check(dout.dtype, dwte=dwte, dwpe=dwpe, dout=dout)
    check(np.int32, inp=inp)
    block_size = 256
    k = kernel("encoder", "encoder_backward_dwpe", dout.dtype)
    k((blocks(T * C, block_size),), (block_size,), (dwpe, dout, np.int32(B), np.int32(T), np.int32(C)))
    order = cupy().argsort(inp.ravel())                  # positions grouped by token (int64)
    k = kernel("encoder", "encoder_backward_dwte", dout.dtype)
    k((B * T,), (128,), (dwte, dout, inp, order, np.int32(B * T), np.int32(C)))
