"""LayerNorm over the channels of each position, eps 1e-5, biased variance (as PyTorch and llm.c).

forward:  mean = x.mean, rstd = 1/sqrt(var + eps), norm = (x - mean) * rstd, out = norm * w + b
          mean and rstd are saved for backward, (B,T) each.
backward: dinp, dweight and dbias all accumulate (+=): layernorm's input is the residual stream,
          whose gradient sums every path that reads it.
residual_layernorm_forward: the residual add and the layernorm after it, one call (one kernel on the
          GPU): residual = inp + proj + proj_bias, then layernorm(residual). proj is a projection's
          product without its bias; the bias goes in here. Its backward is the parts' own: the model
          calls layernorm_backward, and that projection's dbias is the sum of the residual gradient's
          rows, which layernorm_backward adds into dproj_bias as it leaves them (so the model's
          matmul_backward for that projection gets no dbias).

Shapes: B batch, T time, C channels. Any leading shape works in place of (B,T); the buffers are
contiguous, seen as (N, C) rows, and the rows are split over the cores (parallel.py), each part doing
the math below in place on its rows; backward sums dweight and dbias per part, then adds the parts.
"""
import numpy as np

from llmnp.parallel import as_rows, parallel_for
from llmnp.residual import residual_forward

EPS = 1e-5
ROWS = 32          # rows per thread at least: below that, one thread does them all


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (B,T,C), mean (B,T), rstd (B,T) <- inp (B,T,C), weight (C,), bias (C,)."""
    x, y, m, r = as_rows(inp), as_rows(out), mean.reshape(-1), rstd.reshape(-1)   # (N,C) and (N,)
    parallel_for(x.shape[0], lambda lo, hi: _forward_rows(y[lo:hi], m[lo:hi], r[lo:hi], x[lo:hi], weight, bias),
                 grain=ROWS)


def _forward_rows(out, mean, rstd, inp, weight, bias):
    """layernorm_forward on (n,C) rows, in place in out."""
    np.mean(inp, axis=-1, out=mean)
    xc = np.subtract(inp, mean[:, None], out=out)            # centred, in out
    np.mean(np.square(xc), axis=-1, out=rstd)                # biased variance
    rstd += EPS
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    out *= rstd[:, None]                                     # norm = (x - mean) * rstd
    out *= weight
    out += bias


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, dproj_bias=None):
    """Adds into dinp (B,T,C), dweight (C,), dbias (C,) from dout (B,T,C); and into dproj_bias (C,), unless
    None, the rows of dinp as it leaves them summed."""
    x, dy, dx, m, r = as_rows(inp), as_rows(dout), as_rows(dinp), mean.reshape(-1), rstd.reshape(-1)
    sums = []                                                # each part's (dweight, dbias, dinp summed)
    parallel_for(x.shape[0], lambda lo, hi: sums.append(
        _backward_rows(dx[lo:hi], dy[lo:hi], x[lo:hi], weight, m[lo:hi], r[lo:hi])), grain=ROWS)
    for dw, db, dp in sums:
        dweight += dw
        dbias += db
        if dproj_bias is not None:
            dproj_bias += dp


def _backward_rows(dinp, dout, inp, weight, mean, rstd):
    """layernorm_backward on (n,C) rows: adds into dinp, returns this part's (dweight, dbias, dinp summed)."""
    C = inp.shape[-1]
    norm = np.subtract(inp, mean[:, None])
    norm *= rstd[:, None]                                    # forward: norm = (x - mean) * rstd
    dbias = dout.sum(axis=0)                                 # forward: out = norm * w + b
    dnorm = np.multiply(dout, norm)
    dweight = dnorm.sum(axis=0)
    np.multiply(dout, weight, out=dnorm)
    # norm depends on x directly and through mean and rstd; the three terms of d norm / d x:
    # dx = rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))
    dnorm_mean = dnorm.sum(axis=-1, keepdims=True) / C
    dnorm_norm_mean = np.einsum("nc,nc->n", dnorm, norm)[:, None] / C
    norm *= dnorm_norm_mean
    dnorm -= dnorm_mean
    dnorm -= norm
    dnorm *= rstd[:, None]
    dinp += dnorm
    return dweight, dbias, dinp.sum(axis=0)


def residual_layernorm_forward(residual, out, mean, rstd, inp, proj, proj_bias, weight, bias):
    """residual (B,T,C) <- inp + (proj + proj_bias), then out (B,T,C), mean (B,T), rstd (B,T) <- layernorm
    of residual with weight (C,), bias (C,). residual may be proj itself."""
    np.add(proj, proj_bias, out=residual)
    residual_forward(residual, inp, residual)
    layernorm_forward(out, mean, rstd, residual, weight, bias)
