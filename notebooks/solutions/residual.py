"""Notebook 06's exercise: the backward of a pre-LN branch y = x + matmul(layernorm(x))."""
import numpy as np

from llmnp.layernorm import layernorm_backward, layernorm_forward
from llmnp.matmul import matmul_backward


def branch_backward(dy, x, lnw, lnb, W, bias):
    """dx, dlnw, dlnb, dW, dbias from dy (B,T,C), with llmnp's layer functions."""
    B, T, C = x.shape
    ln, mean, rstd = np.empty_like(x), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(ln, mean, rstd, x, lnw, lnb)          # what forward saved
    dx = dy.copy()                                          # 1: the identity path
    dln = np.empty_like(ln)
    dW, dbias = np.zeros_like(W), np.zeros_like(bias)
    dlnw, dlnb = np.zeros_like(lnw), np.zeros_like(lnb)
    matmul_backward(dln, dW, dbias, dy, ln, W)              # 2: the branch's dout is dy
    layernorm_backward(dx, dlnw, dlnb, dln, x, lnw, mean, rstd)   # 3: adds into dx
    return dx, dlnw, dlnb, dW, dbias
