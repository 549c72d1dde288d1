"""Notebook 05's exercise: GELU's backward."""
import math

import numpy as np

S = math.sqrt(2 / math.pi)


def gelu_backward_scratch(dout, x):
    """dx = dout * GELU'(x), elementwise."""
    th = np.tanh(S * (x + 0.044715 * x**3))
    du = S * (1 + 3 * 0.044715 * x**2)                     # du/dx
    return dout * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du)
