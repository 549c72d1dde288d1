"""Causal multi-head self-attention, from the fused qkv projection to the concatenated heads.

forward:  q, k, v = split(qkv) into NH heads of hs = C/NH channels
          att = softmax(q k^T / sqrt(hs)) with future positions masked,   out = att v
          Saved for backward: out itself and lse, the log-sum-exp of each softmax row (B,NH,T).
backward: recomputes att = exp(q k^T / sqrt(hs) - lse) (masked) instead of storing (B,NH,T,T) per
          layer, as flash attention does; then the usual chain through att v and the softmax.
          dqkv is overwritten (qkv is a matmul output read by nothing else). Given dqkv_bias, its rows
          are also summed into it: the qkv projection's bias gradient, which the GPU sums as it
          stores dqkv instead of reading dqkv once more.
On the CPU the batch rows are split over the cores (parallel.py), each part running the same math on its rows.
Not here: dropout, KV caching (generation lives elsewhere).

Shapes: B batch, T time, C channels, NH heads, hs = C/NH. qkv (B,T,3C) holds Q | K | V blocks of C
channels; head h is channels h*hs..(h+1)*hs of each block.
"""
import math

import numpy as np

from llmnp.parallel import parallel_for


def _split_heads(qkv, NH):
    """(B,T,3C) -> three (B,NH,T,hs) views."""
    B, T, C3 = qkv.shape
    hs = C3 // 3 // NH
    qkv = qkv.reshape(B, T, 3, NH, hs)
    return (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _scores(q, k):
    """Scaled, causally masked scores (B,NH,T,T): future keys get -inf."""
    T, hs = q.shape[-2:]
    scores = q @ k.transpose(0, 1, 3, 2)
    scores *= 1.0 / math.sqrt(hs)
    scores += np.triu(np.full((T, T), -np.inf, dtype=scores.dtype), k=1)   # the causal mask
    return scores


def attention_forward(out, lse, qkv):
    """out (B,T,C), lse (B,NH,T) <- qkv (B,T,3C). NH is read from lse's shape."""
    parallel_for(qkv.shape[0], lambda lo, hi: _forward(out[lo:hi], lse[lo:hi], qkv[lo:hi]), grain=1)


def _forward(out, lse, qkv):
    B, T, C = out.shape
    NH = lse.shape[1]
    q, k, v = _split_heads(qkv, NH)
    att = _scores(q, k)                                    # (B,NH,T,T)
    row_max = att.max(axis=-1, keepdims=True)              # the diagonal is never masked: finite
    att -= row_max
    np.exp(att, out=att)
    row_sum = att.sum(axis=-1, keepdims=True)
    np.add(row_max, np.log(row_sum), out=lse[..., None])
    att /= row_sum                                         # softmax
    y = out.reshape(B, T, NH, C // NH).transpose(0, 2, 1, 3)   # heads side by side, written through a view
    np.matmul(att, v, out=y)                               # (B,NH,T,hs)


def attention_backward(dqkv, dout, qkv, out, lse, dqkv_bias=None):
    """dqkv (B,T,3C) overwritten <- dout (B,T,C), with qkv, out, lse saved by forward. dqkv_bias (3C,),
    unless None: += dqkv's rows summed (the qkv projection's bias gradient: its dout is dqkv)."""
    parallel_for(qkv.shape[0], lambda lo, hi: _backward(dqkv[lo:hi], dout[lo:hi], qkv[lo:hi], out[lo:hi],
                                                        lse[lo:hi]), grain=1)
    if dqkv_bias is not None:
        dqkv_bias += dqkv.reshape(-1, dqkv.shape[-1]).sum(axis=0)


def _backward(dqkv, dout, qkv, out, lse):
    B, T, C = out.shape
    NH = lse.shape[1]
    hs = C // NH
    q, k, v = _split_heads(qkv, NH)
    att = _scores(q, k)
    att -= lse[..., None]
    np.exp(att, out=att)                                   # recomputed softmax, 0 where masked
    dy = dout.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)  # (B,NH,T,hs)
    y = out.reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    dq, dk, dv = _split_heads(dqkv, NH)                    # views to write into
    np.matmul(att.transpose(0, 1, 3, 2), dy, out=dv)       # forward: y = att v
    dscores = dy @ v.transpose(0, 1, 3, 2)                 # datt
    # softmax backward: dscores = att * (datt - sum_j datt_j att_j); that sum equals sum(dy * y)
    dscores -= np.einsum("bhtd,bhtd->bht", dy, y)[..., None]
    dscores *= att
    dscores *= 1.0 / math.sqrt(hs)                         # forward: scores = q k^T / sqrt(hs)
    np.matmul(dscores, k, out=dq)
    np.matmul(dscores.transpose(0, 1, 3, 2), q, out=dk)
