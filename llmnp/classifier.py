"""The classifier's loss: softmax over the vocabulary and cross-entropy against the next token.

forward:  probs = softmax(logits[..., :V]), losses = -log probs[target]
backward: fused softmax + cross-entropy: dlogits = (probs - onehot(target)) * dloss, where dloss is
          the weight of each position in the mean loss (1 / (B*T*grad_accum_steps)).
The padded columns V..Vp-1 exist only so that matmuls have nice shapes: their probabilities are 0,
they never enter the loss, and their dlogits are 0, so the padded rows of wte get no gradient.
dlogits is overwritten and may be the probs buffer itself (the model does that, saving a (B,T,Vp)).

Shapes: B batch, T time, V vocab, Vp padded vocab. targets int32 (B,T).
"""
import numpy as np


def softmax_forward(probs, logits, V):
    """probs (B,T,Vp) <- softmax of logits (B,T,Vp) over the first V columns; probs[..., V:] = 0."""
    x = logits[..., :V]
    p = probs[..., :V]
    np.subtract(x, x.max(axis=-1, keepdims=True), out=p)   # max-subtracted: exp never overflows
    np.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    probs[..., V:] = 0.0


def crossentropy_forward(losses, probs, targets):
    """losses (B,T) <- -log probs[b, t, targets[b, t]]."""
    p = np.take_along_axis(probs, targets[..., None].astype(np.intp), axis=-1)[..., 0]
    np.negative(np.log(p), out=losses)


def crossentropy_softmax_backward(dlogits, probs, targets, dloss):
    """dlogits (B,T,Vp) <- (probs - onehot(targets)) * dloss, overwritten; dlogits may alias probs."""
    np.multiply(probs, dloss, out=dlogits)
    B, T = targets.shape
    b, t = np.meshgrid(np.arange(B), np.arange(T), indexing="ij")
    dlogits[b, t, targets] -= dloss
