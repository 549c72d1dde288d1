"""LayerNorm over the channels of each position, eps 1e-5, biased variance (as PyTorch and llm.c).

forward:  mean = x.mean, rstd = 1/sqrt(var + eps), norm = (x - mean) * rstd, out = norm * w + b
          mean and rstd are saved for backward, (B,T) each.
backward: dinp, dweight and dbias all accumulate (+=): layernorm's input is the residual stream,
          whose gradient sums every path that reads it.
residual_layernorm_forward: the residual add and the layernorm after it, one call (one kernel on the
          GPU): residual = inp + proj + proj_bias, then layernorm(residual). proj is a projection's
          product without its bias; the bias goes in here. Its backward is the parts' own (the model
          calls layernorm_backward, and the projection's matmul_backward sums dbias).

Shapes: B batch, T time, C channels. Any leading shape works in place of (B,T).
"""
import numpy as np

from llmnp.residual import residual_forward

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


def residual_layernorm_forward(residual, out, mean, rstd, inp, proj, proj_bias, weight, bias):
    """residual (B,T,C) <- inp + (proj + proj_bias), then out (B,T,C), mean (B,T), rstd (B,T) <- layernorm
    of residual with weight (C,), bias (C,). residual may be proj itself."""
    np.add(proj, proj_bias, out=residual)
    residual_forward(residual, inp, residual)
    layernorm_forward(out, mean, rstd, residual, weight, bias)
