"""Matmul: the linear layer out = inp @ weight^T + bias, weight stored (out, in) as in llm.c.

forward:  out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC,); weight.T is a view, so BLAS reads
          the (out, in) layout directly, without a copy.
backward: dinp = dout @ weight          (overwritten: a matmul's input is never the residual stream)
          dweight += dout^T @ inp        (accumulates, for gradient accumulation over micro-steps;
                                          the product goes through a scratch of at most 4M elements,
                                          a block of rows at a time, so the tied classifier's (Vp, C)
                                          gradient needs no (Vp, C) temporary: 154 MB at d12)
          dbias += dout summed over N    (accumulates)
bias and dbias may be None (the tied classifier has no bias); dinp may be None (nothing to send).
with GELU (the fc layer, as llm.c's gelu fusion):
forward:  pre_gelu = inp @ weight^T + bias, out = gelu(pre_gelu)   (matmul_gelu_forward; backward
          reads pre_gelu)
backward: matmul_backward(..., pre_gelu) for the layer after GELU (fcproj, whose inp is gelu(pre_gelu)):
          dinp = (dout @ weight) * gelu'(pre_gelu), the gradient with respect to pre_gelu

Shapes: N = B*T rows (any leading shape is flattened), C in channels, OC out channels.
"""
import numpy as np

from llmnp.gelu import bias_gelu_forward, gelu_backward_blocked
from llmnp.parallel import BLOCK, blocks, parallel_for

DWEIGHT_BLOCK = 1 << 22          # elements of dweight per product (16 MB in float32): fits the L3 cache


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) <- inp (B,T,C), weight (OC,C), bias (OC,) or None."""
    OC, C = weight.shape
    out2 = out.reshape(-1, OC)                  # (B,T,OC) -> (N,OC), a view of a contiguous buffer
    np.matmul(inp.reshape(-1, C), weight.T, out=out2)
    if bias is not None:
        out2 += bias


def matmul_gelu_forward(out, pre_gelu, inp, weight, bias):
    """pre_gelu (B,T,OC) <- inp (B,T,C) @ weight (OC,C)^T + bias (OC,); out (B,T,OC) <- gelu(pre_gelu)."""
    matmul_forward(pre_gelu, inp, weight, None)
    bias_gelu_forward(out, pre_gelu, bias)      # pre_gelu += bias, out = gelu(pre_gelu): one pass


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None):
    """dinp (B,T,C) overwritten; adds into dweight (OC,C) and dbias (OC,). With pre_gelu (B,T,C), inp
    being gelu(pre_gelu): dinp is the gradient with respect to pre_gelu."""
    OC, C = weight.shape
    dout2 = dout.reshape(-1, OC)                # (N,OC)
    if dinp is not None:
        np.matmul(dout2, weight, out=dinp.reshape(-1, C))
        if pre_gelu is not None:
            gelu_backward_blocked(dinp, pre_gelu, dinp)
    inp2 = inp.reshape(-1, C)                   # (N,C)
    rows = max(1, DWEIGHT_BLOCK // C)
    scratch = np.empty((min(rows, OC), C), dtype=dweight.dtype)
    for i, j in blocks(0, OC, rows):
        part = scratch[:j - i]
        np.matmul(dout2[:, i:j].T, inp2, out=part)   # (rows,N) @ (N,C): dout2.T is a view BLAS reads as is
        dw = dweight[i:j]
        parallel_for(j - i, lambda lo, hi: np.add(dw[lo:hi], part[lo:hi], out=dw[lo:hi]),   # dw += part,
                     grain=max(1, BLOCK // C))                                             # over the cores
    if dbias is not None:
        dbias += dout2.sum(axis=0)


def add_into(out, inp):
    """out += inp, inp float32 and out of the model's dtype: a gradient summed in float32 over several
    products (the classifier's row chunks) added into the model's gradient once."""
    np.add(out, inp, out=out, casting="unsafe")
