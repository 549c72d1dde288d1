"""GELU, the tanh approximation GPT-2 was trained with.

forward:  out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))),  s = sqrt(2/pi)
backward: dinp = dout * d out / d x   (overwritten: GELU's input is a matmul output, read by nothing else)
bias_gelu_forward and gelu_backward_blocked: the forms the model's fc layer runs (through matmul.py's
          matmul_gelu_forward and matmul_backward with pre_gelu), the same arithmetic in place on
          cache-sized blocks of rows spread over the cores: its (B,T,4C) tensors are the largest
          elementwise work of a CPU step. bias_gelu_forward also adds the product's bias on the way
          (inp += bias, then out = gelu(inp)), so the product is read once.

Shapes: any; in GPT-2, (B, T, 4C). bias_gelu_forward: inp (B,T,OC), bias (OC,).
"""
import math

import numpy as np

from llmnp.parallel import BLOCK, as_rows, blocks, parallel_for

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
    """inp (B,T,OC) <- inp + bias, in place (a product that left its bias out gets it), and
    out (B,T,OC) <- gelu(inp): the fc layer's bias and GELU in one pass over the product (matmul.py's
    matmul_gelu_forward). gelu_forward's arithmetic, in place on blocks of rows spread over the cores
    (parallel.py): the model's (B,T,4C) tensors are the largest elementwise work of a step."""
    x_rows, out_rows = as_rows(inp), as_rows(out)                # (N,OC)
    rows = max(1, BLOCK // x_rows.shape[1])

    def part(lo, hi):
        for i, j in blocks(lo, hi, rows):
            x = np.add(x_rows[i:j], bias, out=x_rows[i:j])       # (rows,OC) block of inp + bias, kept
            # gelu_forward's operations in its order, so the two agree to the bit (-r 1 recomputes
            # GELU with gelu_forward)
            t = x * x
            t *= x
            t *= 0.044715
            t += x
            t *= GELU_SCALE                                      # u = s (x + 0.044715 x^3)
            np.tanh(t, out=t)
            t += 1.0
            t *= x
            np.multiply(t, 0.5, out=out_rows[i:j])               # 0.5 x (1 + tanh u)

    parallel_for(x_rows.shape[0], part, grain=rows)


def gelu_backward_blocked(dinp, inp, dout):
    """dinp (B,T,OC) <- dout * gelu'(inp), overwritten; dinp may be dout (in place). gelu_backward's
    arithmetic in blocks of rows over the cores, as bias_gelu_forward (the fc layer's backward,
    matmul.py's matmul_backward with pre_gelu)."""
    x_rows, dout_rows, dinp_rows = as_rows(inp), as_rows(dout), as_rows(dinp)   # (N,OC)
    rows = max(1, BLOCK // x_rows.shape[1])

    def part(lo, hi):
        for i, j in blocks(lo, hi, rows):
            x = x_rows[i:j]                                      # (rows,OC) block of inp
            x2 = x * x
            th = x2 * (0.044715 * GELU_SCALE)
            th += GELU_SCALE
            th *= x                                              # u = s (x + 0.044715 x^3)
            np.tanh(th, out=th)
            x2 *= 3.0 * 0.044715 * GELU_SCALE
            x2 += GELU_SCALE                                     # du/dx = s (1 + 3 * 0.044715 x^2)
            # gelu' = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx = 0.5 (1 + tanh u) (1 + x (1 - tanh u) du/dx)
            g = np.subtract(1.0, th)
            g *= x
            g *= x2
            g += 1.0
            th += 1.0
            g *= th
            g *= 0.5
            np.multiply(g, dout_rows[i:j], out=dinp_rows[i:j])

    parallel_for(x_rows.shape[0], part, grain=rows)
