"""LayerNorm over the channels of each position, eps 1e-5, biased variance (as PyTorch and llm.c).

forward:  mean = x.mean, rstd = 1/sqrt(var + eps), norm = (x - mean) * rstd, out = norm * w + b
          mean and rstd are saved for backward, (B,T) each.
backward: dinp, dweight and dbias all accumulate (+=): layernorm's input is the residual stream,
          whose gradient sums every path that reads it.
Not here: the fused residual + layernorm of the GPU path (it composes residual_forward and this).

Shapes: B batch, T time, C channels. Any leading shape works in place of (B,T).
"""
import numpy as np

EPS = 1e-5


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (B,T,C), mean (B,T), rstd (B,T) <- inp (B,T,C), weight (C,), bias (C,)."""
    np.mean(inp, axis=-1, out=mean)
    xc = inp - mean[..., None]                               # (B,T,C) centred
    np.sqrt(np.mean(xc * xc, axis=-1) + EPS, out=rstd)       # biased variance
    np.divide(1.0, rstd, out=rstd)
    np.multiply(xc, rstd[..., None], out=out)                # norm
    out *= weight
    out += bias


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """Adds into dinp (B,T,C), dweight (C,), dbias (C,) from dout (B,T,C)."""
    C = inp.shape[-1]
    lead = tuple(range(inp.ndim - 1))                        # the (B,T) axes
    norm = (inp - mean[..., None]) * rstd[..., None]         # forward: norm = (x - mean) * rstd
    dbias += dout.sum(axis=lead)                             # forward: out = norm * w + b
    dweight += (dout * norm).sum(axis=lead)
    dnorm = dout * weight
    # norm depends on x directly and through mean and rstd; the three terms of d norm / d x:
    # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    dnorm_mean = dnorm.sum(axis=-1, keepdims=True) / C
    dnorm_norm_mean = (dnorm * norm).sum(axis=-1, keepdims=True) / C
    dinp += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd[..., None]
