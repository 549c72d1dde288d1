# %% [markdown]
# # 05 · GELU
#
# The MLP of each block is `fcproj(gelu(fc(x)))`: widen to 4C channels, apply a nonlinearity to every
# number on its own, narrow back to C. Without the nonlinearity the two matmuls would collapse into one
# linear map. GPT-2 uses the GELU, "Gaussian error linear unit": the input times the probability that a
# standard normal variable is below it,
# $$\text{GELU}(x) = x\,\Phi(x),$$
# a smooth version of $\text{ReLU}(x) = \max(0, x)$. GPT-2 was trained with a tanh approximation of
# $\Phi$, and llm.c and `llmnp` use the same one:
# $$\text{GELU}(x) \approx \tfrac{1}{2}\,x\,\big(1 + \tanh u\big), \qquad u = \sqrt{2/\pi}\,\big(x + 0.044715\,x^3\big)$$
#
# The code: [llmnp/gelu.py](../llmnp/gelu.py); on the GPU: [llmnp/cuda/gelu.cu](../llmnp/cuda/gelu.cu).

# %%
import math

import numpy as np
import matplotlib.pyplot as plt

from llmnp.gelu import gelu_backward, gelu_forward

rng = np.random.default_rng(0)
S = math.sqrt(2 / math.pi)


# %% [markdown]
# ## Forward, from scratch

# %%
def gelu_scratch(x):
    return 0.5 * x * (1 + np.tanh(S * (x + 0.044715 * x**3)))


def gelu_exact(x):
    Phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))   # the standard normal CDF
    return x * Phi


x = np.linspace(-4, 4, 401)
print("largest difference between the tanh form and the exact GELU on [-4, 4]:",
      f"{np.abs(gelu_scratch(x) - gelu_exact(x)).max():.1e}")


# %% [markdown]
# ## Backward, step by step
#
# GELU acts on each number alone, so backward is one derivative per number: $dx = dy \cdot
# \text{GELU}'(x)$. To differentiate $\tfrac12 x (1 + \tanh u)$:
#
# 1. **Product rule** on $x$ times $(1 + \tanh u)$:
#    $\;\tfrac12 (1 + \tanh u) + \tfrac12 x \,\frac{d}{dx}\tanh u$.
# 2. **Chain rule through tanh**, using $\frac{d}{du}\tanh u = 1 - \tanh^2 u$:
#    $\;\frac{d}{dx}\tanh u = (1 - \tanh^2 u)\,\frac{du}{dx}$.
# 3. **The inner polynomial**: $\frac{du}{dx} = \sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\, x^2)$.
#
# Together:
# $$\text{GELU}'(x) = \tfrac12 (1 + \tanh u) + \tfrac12\, x\, (1 - \tanh^2 u)\, \sqrt{2/\pi}\,(1 + 3\cdot 0.044715\,x^2)$$

# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from the formula, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/gelu.py](solutions/gelu.py),
# instead: the rest of the notebook uses whichever passed.

# %%
def gelu_backward_scratch(dout, x):
    """dx = dout * GELU'(x), elementwise."""
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import gelu as solution

gelu_backward_scratch = check_backward(gelu_scratch, gelu_backward_scratch,
                                       dict(x=np.random.default_rng(1).normal(size=(4, 6))), "x",
                                       solution=solution.gelu_backward_scratch)


# %% [markdown]
# ## The picture
#
# Unlike ReLU, GELU is smooth at 0, lets a little negative signal through (its minimum is about
# −0.17 near x = −0.75) and its derivative dips slightly below 0 there and overshoots 1 above. The tanh
# approximation is indistinguishable from the exact curve at this scale; the right panel shows the
# difference.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
ax = axes[0]
ax.plot(x, gelu_scratch(x), label="GELU (tanh form)")
ax.plot(x, np.maximum(0, x), "--", color="gray", label="ReLU")
ax.plot(x, gelu_backward_scratch(np.ones_like(x), x), label="GELU'(x)")
ax.axhline(0, color="black", lw=0.5)
ax.set_xlabel("x")
ax.legend()
ax.set_title("GELU and its derivative")
axes[1].plot(x, gelu_scratch(x) - gelu_exact(x))
axes[1].set_xlabel("x")
axes[1].set_title("tanh form minus exact x·Φ(x)")
plt.tight_layout()
plt.show()


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
x = 1.5 * rng.normal(size=(2, 3, 8))
dout = rng.normal(size=x.shape)
dx = gelu_backward_scratch(dout, x)


def loss():
    return float(np.sum(gelu_scratch(x) * dout))


worst = gradcheck_table(loss, {"x": (x, dx)}, n=6)
assert worst < 1e-8

# %% [markdown]
# ## llmnp's GELU
#
# `gelu_forward(out, inp)` and `gelu_backward(dinp, inp, dout)`. `dinp` is **overwritten**, not
# accumulated: GELU's input is the fc matmul's output, which nothing else reads. Backward needs only
# the saved input `fch` (B, T, 4C), not the output.

# %%
out = np.empty_like(x)
gelu_forward(out, x)
print("forward matches:", np.allclose(out, gelu_scratch(x)))

dx_l = np.full_like(x, 99.0)
gelu_backward(dx_l, x, dout)
print("backward matches (and overwrote the 99s):", np.allclose(dx_l, dx))

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/gelu.cu](../llmnp/cuda/gelu.cu) is the simplest kernel of all: one thread per number,
# no thread talks to another. [Notebook 10](10_cuda.ipynb) reads it line by line and times it. It does
# some twenty arithmetic operations per 8 bytes of memory traffic (read x, write y); a GPU can do far
# more arithmetic than that per byte it moves, so the kernel's speed is set by memory bandwidth. That
# is why GPU trainers fuse it into the matmul before it, and so does llmnp: `matmul_gelu_forward`
# (llmnp/cuda/matmul_lt.py) has cuBLASLt add the fc bias and apply GELU to the product on its way out
# of the tensor cores (an *epilogue*), writing the pre-activation for backward beside it, and the
# backward of the layer after GELU applies $\text{GELU}'$ the same way. This kernel stays: it is the
# reference the epilogues are tested against, the path where cuBLASLt is not installed, and the one
# that recomputes GELU under `-r 1`.
#
# The backward kernel has the forward's shape: thread `j` of the grid takes PACK elements from
# `i = j * PACK` and writes $dx = dy \cdot \text{GELU}'(x)$ for each; as a loop:

# %%
def gelu_backward_threads(dout, x, PACK=4):
    d, u = dout.ravel(), x.ravel()
    dinp = np.empty(u.size)
    for j in range((u.size + PACK - 1) // PACK):      # j = blockIdx.x * blockDim.x + threadIdx.x
        i = j * PACK
        dinp[i:i + PACK] = gelu_backward_scratch(d[i:i + PACK], u[i:i + PACK])   # gelu_grad, element by element
    return dinp.reshape(x.shape)


xs = rng.normal(size=(3, 7))
ds = rng.normal(size=(3, 7))
print("the thread loop = the backward:", np.allclose(gelu_backward_threads(ds, xs), gelu_backward_scratch(ds, xs)))

# %%
from kernels import GPU, compile_kernels, show

show("gelu", "__device__ __forceinline__ float gelu_grad(", "}")
print()
show("gelu", "gelu_backward_kernel(", "store128(")
compile_kernels("gelu")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    x32, d32 = np.random.default_rng(1).normal(size=(2, 4, 64, 3072)).astype(np.float32)
    ref = np.empty_like(x32)
    gelu_backward(ref, x32, d32)
    dinp_gpu = cp.empty(x32.shape, cp.float32)
    cuda.gelu_backward(dinp_gpu, cp.asarray(x32), cp.asarray(d32))
    print(f"max |GPU - NumPy| = {float(abs(dinp_gpu.get() - ref).max()):.1e}")

# %% [markdown]
#
# Next: [06 residual](06_residual.ipynb).
