"""GELU, the tanh approximation GPT-2 was trained with.

forward:  out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))),  s = sqrt(2/pi)
backward: dinp = dout * d out / d x   (overwritten: GELU's input is a matmul output, read by nothing else)

Shapes: any; in GPT-2, (B, T, 4C).
"""
import math

import numpy as np

# a Python float: a NumPy float64 scalar would silently promote float32 arrays to float64
GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu_forward(out, inp):
    """out <- gelu(inp), same shape."""
    x = inp
    np.tanh(GELU_SCALE * (x + 0.044715 * (x * x * x)), out=out)   # out = tanh(u)
    out += 1.0
    out *= 0.5 * x


def gelu_backward(dinp, inp, dout):
    """dinp <- dout * gelu'(inp), overwritten."""
    x = inp
    u = GELU_SCALE * (x + 0.044715 * (x * x * x))
    th = np.tanh(u)
    # d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx
    du = GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
    np.multiply(0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du, dout, out=dinp)
