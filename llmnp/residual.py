"""Residual connection: out = inp1 + inp2.

backward: the gradient passes unchanged to both inputs; dinp1 and dinp2 accumulate (+=).
In model.py the residual stream has one gradient buffer, so this backward is the identity there: the
branch reads dresidual as its dout and the stream keeps it. The function stays for the layer set and
its tests (and the notebooks).

Shapes: any, usually (B, T, C). out may be the same buffer as inp1 or inp2.
"""
import numpy as np


def residual_forward(out, inp1, inp2):
    np.add(inp1, inp2, out=out)


def residual_backward(dinp1, dinp2, dout):
    dinp1 += dout
    dinp2 += dout
