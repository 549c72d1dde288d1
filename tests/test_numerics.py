"""Softmaxes at large scores: attention scores and logits of 100 to 1000, where exp() without the row
maximum subtracted overflows (float32 beyond ~88, float64 beyond ~709). Each layer in float32 and
float64 against a float64 oracle written here from the formulas (max-subtracted, per head and row)."""
import math

import numpy as np
import pytest

from llmnp.attention import attention_backward, attention_forward
from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward, softmax_forward

B, T, NH, hs = 2, 7, 2, 8
C = NH * hs


def large_qkv(scale, seed=0):
    """qkv (B,T,3C) in float32 whose scaled scores q.k/sqrt(hs) reach +-scale."""
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, T, 3 * C))
    qkv[..., :2 * C] *= math.sqrt(scale / 2)              # q.k / sqrt(hs) ~ scale/2 * N(0, 1)
    return qkv.astype(np.float32)


def oracle(qkv):
    """(out (B,T,C), lse (B,NH,T), and a function dout -> dqkv), float64, one head at a time."""
    qkv = qkv.astype(np.float64)
    out, lse, probs = np.zeros((B, T, C)), np.zeros((B, NH, T)), {}
    for b in range(B):
        for h in range(NH):
            q, k, v = (qkv[b, :, i * C + h * hs:i * C + (h + 1) * hs] for i in range(3))
            s = q @ k.T / math.sqrt(hs)
            s[np.triu_indices(T, 1)] = -np.inf
            top = s.max(axis=1, keepdims=True)
            e = np.exp(s - top)
            lse[b, h] = (top + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
            p = e / e.sum(axis=1, keepdims=True)
            probs[b, h] = p
            out[b, :, h * hs:(h + 1) * hs] = p @ v

    def backward(dout):
        dqkv = np.zeros((B, T, 3 * C))
        for b in range(B):
            for h in range(NH):
                cols = [slice(i * C + h * hs, i * C + (h + 1) * hs) for i in range(3)]
                q, k, v = (qkv[b, :, c] for c in cols)
                p, dy = probs[b, h], dout[b, :, h * hs:(h + 1) * hs]
                dp = dy @ v.T
                ds = p * (dp - (dp * p).sum(axis=1, keepdims=True)) / math.sqrt(hs)
                dqkv[b, :, cols[0]], dqkv[b, :, cols[1]], dqkv[b, :, cols[2]] = ds @ k, ds.T @ q, p.T @ dy
        return dqkv
    return out, lse, backward


@pytest.mark.parametrize("scale", [100.0, 300.0, 1000.0])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-9), (np.float32, 2e-3)])
def test_attention_at_large_scores(scale, dtype, tol):
    qkv32 = large_qkv(scale)
    want_out, want_lse, want_backward = oracle(qkv32)
    assert np.abs(want_lse).max() > 0.4 * scale                  # the scores really are that large
    qkv = qkv32.astype(dtype)
    out, lse = np.empty((B, T, C), dtype), np.empty((B, NH, T), dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        attention_forward(out, lse, qkv)
    np.testing.assert_allclose(out, want_out, rtol=0, atol=tol)
    np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol)
    dout = np.random.default_rng(1).standard_normal((B, T, C))
    dqkv = np.empty_like(qkv)
    with np.errstate(over="raise", invalid="raise"):
        attention_backward(dqkv, dout.astype(dtype), qkv, out, lse)
    want = want_backward(dout)
    np.testing.assert_allclose(dqkv, want, rtol=0, atol=tol * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("offset", [100.0, 1000.0])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_classifier_at_large_logits(offset, dtype, tol):
    Vb, V, Vp = 3, 13, 16
    rng = np.random.default_rng(2)
    rows = offset * (1 + np.arange(Vb) % 2)[None, :, None]       # rows at offset and 2 offset: each row
    logits32 = (rng.standard_normal((B, Vb, Vp)) * 3 + rows).astype(np.float32)   # needs its own max
    logits32[..., V:] = -offset                                   # padding never counts
    targets = rng.integers(0, V, size=(B, Vb)).astype(np.int32)
    x = logits32[..., :V].astype(np.float64)
    top = x.max(-1, keepdims=True)
    want_lse = (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[..., 0]
    want_p = np.exp(x - want_lse[..., None])
    want_loss = want_lse - np.take_along_axis(x, targets[..., None], -1)[..., 0]

    logits = logits32.astype(dtype)
    probs = np.empty_like(logits)
    losses, lse = np.empty((B, Vb), dtype), np.empty((B, Vb), dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        softmax_forward(probs, logits, V)
        crossentropy_forward(losses, lse, logits, targets, V)
    np.testing.assert_allclose(probs[..., :V], want_p, rtol=0, atol=tol)
    np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=0)
    np.testing.assert_allclose(losses, want_loss, rtol=0, atol=tol * offset)
    dlogits = np.empty_like(logits)
    with np.errstate(over="raise", invalid="raise"):
        crossentropy_softmax_backward(dlogits, logits, lse, targets, 0.5, V)
    want_d = 0.5 * want_p
    want_d[np.arange(B)[:, None], np.arange(Vb), targets] -= 0.5
    np.testing.assert_allclose(dlogits[..., :V], want_d, rtol=0, atol=tol * offset)
    np.testing.assert_array_equal(dlogits[..., V:], 0.0)
