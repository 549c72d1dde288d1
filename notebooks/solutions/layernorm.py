"""Notebook 02's exercise: the layernorm backward in its simplified form."""
import numpy as np


def layernorm_backward_scratch(dout, x, w, b, eps=1e-5):
    """dx (B,T,C), dw (C,), db (C,) from dout (B,T,C); the statistics recomputed from x."""
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    norm = (x - mean) * rstd                           # x hat
    db = dout.sum(axis=(0, 1))                         # forward: y = norm * w + b
    dw = (dout * norm).sum(axis=(0, 1))
    dnorm = dout * w
    dx = rstd * (dnorm                                 # less its mean, less its part along norm
                 - dnorm.mean(axis=-1, keepdims=True)
                 - norm * (dnorm * norm).mean(axis=-1, keepdims=True))
    return dx, dw, db
