"""Notebook 04's exercise: one causal attention head's backward."""
import numpy as np


def attention_head_backward_scratch(dy, q, k, v):
    """dq, dk, dv (T,hs) from dy (T,hs); the attention weights P recomputed as forward makes them."""
    T, hs = q.shape
    S = q @ k.T / np.sqrt(hs)
    S[np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    dv = P.T @ dy                                          # step 1: y = P v
    dP = dy @ v.T
    y = P @ v
    dS = P * (dP - (dy * y).sum(axis=1, keepdims=True))    # steps 2 and 3: the softmax, the shortcut
    dq = dS @ k / np.sqrt(hs)                              # step 5: S = q k^T / sqrt(hs)
    dk = dS.T @ q / np.sqrt(hs)
    return dq, dk, dv
