"""Notebook 01's exercise: the encoder's backward."""
import numpy as np


def encoder_backward_scratch(dout, inp, wte, wpe):
    """dwte (Vp,C), dwpe (maxT,C) from dout (B,T,C): each position sends its dout row back to the two rows
    it read."""
    B, T, C = dout.shape
    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    for b in range(B):
        for t in range(T):
            dwte[inp[b, t]] += dout[b, t]     # the token row this position read
            dwpe[t] += dout[b, t]             # the position row it read
    return dwte, dwpe
