"""GELU, the tanh approximation GPT-2 was trained with.

forward:  out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))),  s = sqrt(2/pi)
backward: dinp = dout * d out / d x   (overwritten: GELU's input is a matmul output, read by nothing else)
bias_gelu: out = gelu(inp + bias), bias (OC,) broadcast over the rows: the fc layer's bias, added here
          rather than by the matmul before it (one pass over the (B,T,4C) product fewer on the GPU).
          Its backward writes dinp (overwritten) and adds the bias gradient, dinp summed over (B,T),
          into dbias (+=).

Shapes: any; in GPT-2, (B, T, 4C). bias_gelu: inp (B,T,OC), bias (OC,).
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


def bias_gelu_forward(out, inp, bias):
    """out (B,T,OC) <- gelu(inp + bias), inp (B,T,OC) a product without its bias (OC,)."""
    gelu_forward(out, inp + bias)


def bias_gelu_backward(dinp, dbias, dout, inp, bias):
    """dinp (B,T,OC) <- dout * gelu'(inp + bias), overwritten; adds into dbias (OC,) dinp summed over (B,T)."""
    gelu_backward(dinp, inp + bias, dout)
    dbias += dinp.reshape(-1, dinp.shape[-1]).sum(axis=0)
