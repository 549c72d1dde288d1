"""Notebook 07's exercise: softmax and cross-entropy's fused backward."""
import numpy as np


def crossentropy_softmax_backward_scratch(dloss, logits, targets, V):
    """dlogits (B,T,Vp) = (softmax(logits[..., :V]) - onehot(targets)) * dloss, 0 in the padded
    columns; dloss the weight of each position's loss, a number or a (B,T) array."""
    B, T = targets.shape
    dloss = np.broadcast_to(dloss, (B, T))[..., None]      # (B,T,1)
    z = logits[..., :V]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    dlogits = np.zeros(logits.shape)
    dlogits[..., :V] = e / e.sum(axis=-1, keepdims=True) * dloss   # p_i, times the weight
    dlogits[np.arange(B)[:, None], np.arange(T), targets] -= dloss[..., 0]   # minus 1 at the target
    return dlogits
