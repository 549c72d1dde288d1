# %% [markdown]
# # 06 · Residual connections
#
# Each block does not replace the residual stream $x$; it *adds* to it, twice:
# $$x \leftarrow x + \text{attention branch}(x), \qquad x \leftarrow x + \text{MLP branch}(x)$$
# The layer itself is the simplest there is, `out = inp1 + inp2`. What matters is what it does to the
# backward pass. For $y = x + f(x)$:
# $$dx = dy + \Big(\frac{\partial f}{\partial x}\Big)^{\!\top} dy$$
# The first term is $dy$ itself, passed down unchanged: however many blocks sit above, the gradient of
# the loss reaches the bottom of the model along this path without being multiplied by anything. The
# branches add their corrections on top.
#
# The code: [llmnp/residual.py](../llmnp/residual.py); on the GPU: [llmnp/cuda/residual.cu](../llmnp/cuda/residual.cu).

# %%
import inspect

import numpy as np
import matplotlib.pyplot as plt

from llmnp import model as llmnp_model
from llmnp.layernorm import layernorm_backward, layernorm_forward
from llmnp.matmul import matmul_backward, matmul_forward
from llmnp.residual import residual_backward, residual_forward

rng = np.random.default_rng(0)


# %% [markdown]
# ## Forward and backward, from scratch
#
# $\text{out} = a + b$, so $\partial\,\text{out}_i / \partial a_i = \partial\,\text{out}_i / \partial b_i = 1$:
# both inputs receive `dout` unchanged. Written as llm.c writes it, adding into gradient buffers the
# caller owns (`+=`), because $a$, the residual stream, also receives gradient from the branch that
# reads it:

# %%
def residual_forward_scratch(a, b):
    return a + b


def residual_backward_scratch(da, db, dout):
    da += dout
    db += dout


a, b = rng.normal(size=(2, 2, 3, 4))
dout = rng.normal(size=a.shape)
da, db = np.zeros_like(a), np.zeros_like(b)
residual_backward_scratch(da, db, dout)


# %% [markdown]
# ## Finite-difference check
#
# A derivative is a slope, so it can be measured: nudge one input by a tiny $\varepsilon$ both ways and
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon}$$
# with an error of order $\varepsilon^2$. That costs two forward passes per number, far too slow to
# train with, and exactly right for checking a hand-written backward on a few entries. In float64 with
# $\varepsilon = 10^{-6}$ the two should agree to about 9 digits.
#
# A layer's output is a tensor, not a number. To get a number, take $L = \sum \text{out} \odot
# \text{dout}$ for a fixed random `dout`: its gradient with respect to `out` is `dout` itself, so the
# backward pass fed with that `dout` must produce exactly $\partial L / \partial \text{input}$.

# %%
def numeric_grad(f, x, idx, eps=1e-6):
    """Central difference (f(x + eps) - f(x - eps)) / 2 eps in the single element idx of array x."""
    saved = x[idx]
    x[idx] = saved + eps
    up = f()
    x[idx] = saved - eps
    down = f()
    x[idx] = saved                       # put it back
    return (up - down) / (2 * eps)


def gradcheck_table(f, named, n=3, seed=0):
    """named = {label: (array, its analytic gradient)}. Prints numeric vs analytic derivative of the
    scalar f() for n random elements of each array; returns the worst error, relative where the
    derivative is above 1 and absolute below (so that 1e-12 vs 0 counts as agreement)."""
    rng = np.random.default_rng(seed)
    print(f"{'tensor':>8}  {'element':<14}{'numeric':>14}{'analytic':>14}{'error':>10}")
    worst = 0.0
    for label, (x, grad) in named.items():
        for flat_index in rng.choice(x.size, size=min(n, x.size), replace=False):
            idx = tuple(int(i) for i in np.unravel_index(flat_index, x.shape))
            num, ana = numeric_grad(f, x, idx), float(grad[idx])
            err = abs(num - ana) / max(abs(num), abs(ana), 1.0)
            worst = max(worst, err)
            print(f"{label:>8}  {str(idx):<14}{num:14.6e}{ana:14.6e}{err:10.1e}")
    return worst


# %%
def loss():
    return float(np.sum(residual_forward_scratch(a, b) * dout))


worst = gradcheck_table(loss, {"a": (a, da), "b": (b, db)})
assert worst < 1e-8

# %% [markdown]
# ## A whole branch: where the gradient of the stream accumulates
#
# Now a real pre-LN branch, as GPT-2 has: $y = x + \text{matmul}(\text{layernorm}(x))$, built from
# `llmnp`'s layers. Backward, step by step:
#
# 1. The identity path: $dx$ starts as $dy$.
# 2. The branch's last layer, the matmul, gets $dy$ as its `dout` and produces $d\,\text{ln}$.
# 3. The layernorm's backward turns $d\,\text{ln}$ into its input gradient and **adds** it into $dx$,
#    the same buffer that already holds $dy$.
#
# This is why `layernorm_backward` accumulates into `dinp`: there is one buffer for the stream's
# gradient, and every reader of the stream adds its share into it.

# %%
B, T, C = 2, 3, 4
x = rng.normal(size=(B, T, C))
lnw, lnb = 1 + 0.1 * rng.normal(size=C), 0.1 * rng.normal(size=C)
W, bias = rng.normal(size=(C, C)), rng.normal(size=C)


def block_forward(x, lnw, lnb, W, bias):
    ln, mean, rstd = np.empty_like(x), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(ln, mean, rstd, x, lnw, lnb)
    y = np.empty_like(x)
    matmul_forward(y, ln, W, bias)                     # the branch
    residual_forward(y, x, y)                          # y = x + branch, in place
    return y


# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from the three steps, with `llmnp`'s `matmul_backward` and `layernorm_backward`, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/residual.py](solutions/residual.py),
# instead: the rest of the notebook uses whichever passed.
#
# (Both add into the parameter gradients; `layernorm_backward` adds into `dinp` too, which is the point.)

# %%
def branch_backward(dy, x, lnw, lnb, W, bias):
    """dx, dlnw, dlnb, dW, dbias from dy (B,T,C)."""
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import residual as solution

inputs = dict(x=x, lnw=lnw, lnb=lnb, W=W, bias=bias)
branch_backward = check_backward(block_forward, branch_backward, inputs, ("x", "lnw", "lnb", "W", "bias"),
                                 solution=solution.branch_backward)
dy = rng.normal(size=x.shape)
dx, dlnw, dlnb, dW, dbias = branch_backward(dy, **inputs)


def loss():
    return float(np.sum(block_forward(**inputs) * dy))


worst = gradcheck_table(loss, {"x": (x, dx), "W": (W, dW), "lnw": (lnw, dlnw)})
assert worst < 1e-7

# %% [markdown]
# `GPT2.backward` in [llmnp/model.py](../llmnp/model.py) does exactly this with one buffer, `dres`,
# for all blocks: the projections read it as their `dout`, the layernorms add into it, and it walks
# down the model from the top to the encoder. The lines that touch it:

# %%
for line in inspect.getsource(llmnp_model.GPT2.backward).splitlines():
    if "dres" in line:
        print(line.strip())

# %% [markdown]
# ## Why it matters: the gradient at depth
#
# A stack of 32 layers with small weights (GPT-2 initializes its weights small), each $h = \tanh(W x)$.
# Without residual connections, $x_{l+1} = h$ and the gradient is multiplied by $W^\top
# \text{diag}(\tanh')$ at every layer, shrinking geometrically on its way down. With them,
# $x_{l+1} = x_l + \alpha h$ (α = 1/√(2·32) plays the role of GPT-2's scaled-down projection init)
# and the identity path carries it down intact.

# %%
C, depth = 64, 32
Ws = [0.5 * rng.normal(size=(C, C)) / np.sqrt(C) for _ in range(depth)]
alpha = 1 / np.sqrt(2 * depth)
x0 = rng.normal(size=(16, C))


def gradient_norms(residual):
    """|dL/dx_l| for l = 0..depth, for L = sum(x_depth * dtop) with a random dtop."""
    xs, hs = [x0], []
    for W in Ws:                                       # forward
        h = np.tanh(xs[-1] @ W.T)
        hs.append(h)
        xs.append(xs[-1] + alpha * h if residual else h)
    dx = rng.normal(size=x0.shape)
    norms = [np.linalg.norm(dx)]
    for W, h in zip(reversed(Ws), reversed(hs)):       # backward, top to bottom
        if residual:
            dx = dx + (alpha * dx * (1 - h * h)) @ W   # identity path + branch
        else:
            dx = (dx * (1 - h * h)) @ W
        norms.append(np.linalg.norm(dx))
    return np.array(norms[::-1]) / norms[0]


fig, ax = plt.subplots(figsize=(7, 3.4))
ax.semilogy(gradient_norms(False), "o-", ms=3, label="plain stack: x = tanh(W x)")
ax.semilogy(gradient_norms(True), "o-", ms=3, label="residual: x = x + α tanh(W x)")
ax.set_xlabel("layer (0 = bottom)")
ax.set_ylabel("|gradient| / |gradient at the top|")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## llmnp's residual
#
# `residual_forward(out, inp1, inp2)` and `residual_backward(dinp1, dinp2, dout)`, both gradients
# accumulating. `out` may be the same buffer as an input: the model writes a branch's projection
# straight into the stream's next buffer and adds the stream to it in place.

# %%
out = np.empty_like(a)
residual_forward(out, a, b)
print("forward matches:", np.allclose(out, a + b))
da_l, db_l = np.zeros_like(a), np.ones_like(b)
residual_backward(da_l, db_l, dout)
print("backward matches, accumulating:", np.allclose(da_l, dout), np.allclose(db_l, 1 + dout))

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/residual.cu](../llmnp/cuda/residual.cu) is an elementwise add, the kind of kernel worth
# fusing with the layernorm that reads its output (the model does: `residual_layernorm_forward`,
# notebook 12). The loop it is the body of, with its flat index: thread `j` of the whole grid takes
# the PACK elements from `i = j * PACK` (PACK = 4 floats, one 16-byte load per input):

# %%
def residual_forward_threads(a, b, PACK=4):
    x, y = a.ravel(), b.ravel()
    out = np.empty(x.size)
    for j in range((x.size + PACK - 1) // PACK):      # j = blockIdx.x * blockDim.x + threadIdx.x
        i = j * PACK
        out[i:i + PACK] = x[i:i + PACK] + y[i:i + PACK]
    return out.reshape(a.shape)


print("the thread loop = residual_forward:", np.allclose(residual_forward_threads(a, b), out))

# %%
from kernels import GPU, compile_kernels, show

show("residual", "residual_forward_kernel(", "store128(out + i, o);")
compile_kernels("residual")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    a32, b32 = np.random.default_rng(1).normal(size=(2, 4, 64, 768)).astype(np.float32)
    out_gpu = cp.empty(a32.shape, cp.float32)
    cuda.residual_forward(out_gpu, cp.asarray(a32), cp.asarray(b32))
    print(f"max |GPU - NumPy| = {float(abs(out_gpu.get() - (a32 + b32)).max()):.1e}")

# %% [markdown]
#
# Next: [07 classifier](07_classifier.ipynb), where the loss comes from.
