"""Matmul: the linear layer out = inp @ weight^T + bias, weight stored (out, in) as in llm.c.

forward:  out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC,); weight.T is a view, so BLAS reads
          the (out, in) layout directly, without a copy.
backward: dinp = dout @ weight          (overwritten: a matmul's input is never the residual stream)
          dweight += dout^T @ inp        (accumulates, for gradient accumulation over micro-steps)
          dbias += dout summed over N    (accumulates)
bias and dbias may be None (the tied classifier has no bias); dinp may be None (nothing to send).

Shapes: N = B*T rows (any leading shape is flattened), C in channels, OC out channels.
"""
import numpy as np


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) <- inp (B,T,C), weight (OC,C), bias (OC,) or None."""
    OC, C = weight.shape
    out2 = out.reshape(-1, OC)                  # (B,T,OC) -> (N,OC), a view of a contiguous buffer
    np.matmul(inp.reshape(-1, C), weight.T, out=out2)
    if bias is not None:
        out2 += bias


def matmul_backward(dinp, dweight, dbias, dout, inp, weight):
    """dinp (B,T,C) overwritten; adds into dweight (OC,C) and dbias (OC,)."""
    OC, C = weight.shape
    dout2 = dout.reshape(-1, OC)                # (N,OC)
    if dinp is not None:
        np.matmul(dout2, weight, out=dinp.reshape(-1, C))
    dweight += dout2.T @ inp.reshape(-1, C)     # (OC,N) @ (N,C)
    if dbias is not None:
        dbias += dout2.sum(axis=0)
