"""Encoder: token embedding plus position embedding, the first layer of GPT-2.

forward:  out[b,t,:] = wte[inp[b,t], :] + wpe[t, :]
backward: every position's gradient flows back to the wte row of its token and the wpe row of its
          position. Both parameter gradients accumulate (+=).
Not here: dropout (GPT-2 training as llm.c does it has none).

Shapes: B batch, T time, C channels, Vp padded vocab, maxT positions.
"""
import numpy as np


def encoder_forward(out, inp, wte, wpe):
    """out (B,T,C) = wte[inp] + wpe[:T]; inp int32 (B,T), wte (Vp,C), wpe (maxT,C)."""
    T = inp.shape[1]
    np.take(wte, inp, axis=0, out=out)   # (B,T) indices -> (B,T,C) rows
    out += wpe[:T]                       # broadcast (T,C) over B


def encoder_backward(dwte, dwpe, dout, inp):
    """Adds into dwte (Vp,C) and dwpe (maxT,C) from dout (B,T,C)."""
    T = inp.shape[1]
    dwpe[:T] += dout.sum(axis=0)                 # every batch row used the same positions
    np.add.at(dwte, inp.reshape(-1), dout.reshape(-1, dout.shape[-1]))  # repeated tokens add up
