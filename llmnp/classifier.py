"""The classifier's loss: cross-entropy of the softmax over the vocabulary against the next token,
computed from the logits directly, and its fused backward. No probabilities are kept between them.

softmax:  probs = softmax(logits[..., :V]); a layer of its own (sampling, notebooks), not part of training
forward:  lse = logsumexp(logits[..., :V]), saved for backward (B,T);
          losses = lse - logits[target]    (= -log softmax(logits)[target])
backward: dlogits = (softmax(logits[..., :V]) - onehot(target)) * dloss, the softmax recomputed from the
          logits and the saved lse as exp(logits - lse), dloss the weight of each position in the mean
          loss (1 / (B*T*grad_accum_steps)).
both:     the forward's losses and the backward's dlogits in one call, no lse kept (training's
          classifier, model.forward_backward: on the GPU one read of the logits instead of two).
As llm.c's fused classifier, training never writes a (B,T,Vp) probs tensor: the forward reads the logits
and leaves them as they are; the backward reads each row once and overwrites dlogits, which may be the
logits buffer itself (the model does that, so after backward its logits hold dlogits).
The padded columns V..Vp-1 exist only so that matmuls have nice shapes: they never enter the softmax or
the loss, their probabilities and dlogits are 0, so the padded rows of wte get no gradient.

On the CPU the loss and its backward walk the (B*T, Vp) rows in blocks of a few rows, split over the
cores (parallel.py): one pass over the logits each, and no (B,T,V) temporary.

Shapes: B batch, T time, V vocab, Vp padded vocab. targets int32 (B,T).
"""
import numpy as np

from llmnp.parallel import as_rows, blocks, parallel_for

ROWS = 4          # rows of the (N, Vp) logits per block: under 1 MB, in the L2 cache


def softmax_forward(probs, logits, V):
    """probs (B,T,Vp) <- softmax of logits (B,T,Vp) over the first V columns; probs[..., V:] = 0.
    probs may be logits itself."""
    x = logits[..., :V]
    p = probs[..., :V]
    np.subtract(x, x.max(axis=-1, keepdims=True), out=p)   # max-subtracted: exp never overflows
    np.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    probs[..., V:] = 0.0


def crossentropy_forward(losses, lse, logits, targets, V):
    """losses (B,T) <- lse - logits[b, t, targets[b, t]], lse (B,T) <- logsumexp(logits[b, t, :V]);
    logits (B,T,Vp) are only read."""
    x, lse_rows = as_rows(logits)[:, :V], lse.reshape(-1)                      # (N,V), (N,)

    def part(lo, hi):
        for i, j in blocks(lo, hi, ROWS):
            m = x[i:j].max(axis=-1)                          # (rows,), so that exp never overflows
            e = np.subtract(x[i:j], m[:, None])              # (rows,V) block temporary
            np.exp(e, out=e)
            np.add(np.log(e.sum(axis=-1)), m, out=lse_rows[i:j])

    parallel_for(x.shape[0], part, grain=ROWS)
    z = np.take_along_axis(logits, targets[..., None].astype(np.intp), axis=-1)[..., 0]
    np.subtract(lse, z, out=losses)


def crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V):
    """dlogits (B,T,Vp) <- (exp(logits[..., :V] - lse) - onehot(targets)) * dloss, 0 in the padded columns,
    lse (B,T) from crossentropy_forward; overwritten, and dlogits may be logits itself."""
    x, dx, lse_rows = as_rows(logits)[:, :V], as_rows(dlogits), lse.reshape(-1)

    def part(lo, hi):
        for i, j in blocks(lo, hi, ROWS):
            p = dx[i:j, :V]
            np.subtract(x[i:j], lse_rows[i:j, None], out=p)  # log softmax: no max or sum over the row again
            np.exp(p, out=p)                                 # p, recomputed: the forward kept none
            p *= dloss
            dx[i:j, V:] = 0.0

    parallel_for(x.shape[0], part, grain=ROWS)
    t = targets.reshape(-1)
    dx[np.arange(t.size), t] -= dloss


def crossentropy_forward_backward(losses, dlogits, logits, targets, dloss, V):
    """crossentropy_forward's losses (B,T) and crossentropy_softmax_backward's dlogits (B,T,Vp) in one call
    (no lse kept); dlogits may be logits itself."""
    lse = np.empty(losses.shape, losses.dtype)
    crossentropy_forward(losses, lse, logits, targets, V)
    crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V)
