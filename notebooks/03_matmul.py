# %% [markdown]
# # 03 · Matmul: the linear layer
#
# Four of them in every block (qkv, attention projection, fc, fc projection) and one at the top (the
# classifier, with `wte` as its weight). Each position's vector of C numbers becomes OC numbers, each a
# weighted sum of the inputs plus a bias. The B·T positions are independent rows, so flatten them to
# $N = B\cdot T$ rows. With the weight stored (out, in), as in PyTorch and llm.c:
# $$y_{n,o} = \sum_{c} x_{n,c}\, W_{o,c} + b_o \qquad\Longleftrightarrow\qquad Y = X\,W^\top + b$$
# with X (N, C), W (OC, C), b (OC), Y (N, OC).
#
# The code: [llmnp/matmul.py](../llmnp/matmul.py); on the GPU: [llmnp/cuda/matmul.cu](../llmnp/cuda/matmul.cu).

# %%
import time

import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2Config
from llmnp.matmul import matmul_backward, matmul_forward

rng = np.random.default_rng(0)
B, T, C, OC = 2, 3, 4, 5
x = rng.normal(size=(B, T, C))       # (B,T,C)
W = rng.normal(size=(OC, C))         # (OC,C): row o holds the input weights of output o
b = rng.normal(size=OC)              # (OC,)


# %% [markdown]
# ## Forward, from scratch

# %%
def matmul_forward_scratch(x, W, b):
    return x @ W.T + b               # (B,T,C) @ (C,OC) + (OC,) -> (B,T,OC)


y = matmul_forward_scratch(x, W, b)
print(y.shape)
print("one element by the formula:", np.isclose(y[1, 2, 3], sum(x[1, 2, c] * W[3, c] for c in range(C)) + b[3]))


# %% [markdown]
# ## Backward, step by step
#
# Given `dout` $= dY$ (N, OC), find $dX$, $dW$, $db$. Work element by element, then recognize the
# matrix product.
#
# **The input.** $x_{n,c}$ appears in $y_{n,o}$ for every output $o$ of its own row, with coefficient
# $W_{o,c}$. Chain rule, summing over those outputs:
# $$dx_{n,c} = \sum_o dy_{n,o}\, W_{o,c} \qquad\Longrightarrow\qquad dX = dY\, W \quad\text{(N, OC) @ (OC, C)}$$
#
# **The weight.** $W_{o,c}$ appears in $y_{n,o}$ for every row $n$, with coefficient $x_{n,c}$:
# $$dW_{o,c} = \sum_n dy_{n,o}\, x_{n,c} \qquad\Longrightarrow\qquad dW = dY^\top X \quad\text{(OC, N) @ (N, C)}$$
#
# **The bias.** $b_o$ appears in $y_{n,o}$ for every row with coefficient 1: $db_o = \sum_n dy_{n,o}$.
#
# A shortcut to remember it: each gradient has its variable's shape, and there is only one way to
# multiply $dY$ (N, OC) with the other operand to get it. The sums over $n$ are why a weight's
# gradient grows with the batch: the same weight serves every position.

# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from the three formulas, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/matmul.py](solutions/matmul.py),
# instead: the rest of the notebook uses whichever passed.

# %%
def matmul_backward_scratch(dout, x, W, b):
    """dx (B,T,C), dW (OC,C), db (OC,) from dout (B,T,OC). Flatten (B,T) to N rows first."""
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import matmul as solution

matmul_backward_scratch = check_backward(matmul_forward_scratch, matmul_backward_scratch, dict(x=x, W=W, b=b),
                                         ("x", "W", "b"), solution=solution.matmul_backward_scratch)
dout = rng.normal(size=(B, T, OC))
dx, dW, db = matmul_backward_scratch(dout, x, W, b)
print("dx[1,2,3] by the formula:", np.isclose(dx[1, 2, 3], sum(dout[1, 2, o] * W[o, 3] for o in range(OC))))


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
    return float(np.sum(matmul_forward_scratch(x, W, b) * dout))


worst = gradcheck_table(loss, {"x": (x, dx), "W": (W, dW), "b": (b, db)})
assert worst < 1e-8

# %% [markdown]
# ## llmnp's matmul
#
# `matmul_forward(out, inp, weight, bias)` and `matmul_backward(dinp, dweight, dbias, dout, inp,
# weight)`. Their accumulate rules differ by buffer, and the docstring says which:
# - `dweight` and `dbias` **accumulate** (`+=`), like every parameter gradient;
# - `dinp` is **overwritten**: a matmul's input (a layernorm output, the attention output or the GELU
#   output) is read by nothing else, so there is nothing to add to.
#
# `bias` may be `None`: the classifier (`logits = lnf @ wte^T`) has none.

# %%
out = np.empty((B, T, OC))
matmul_forward(out, x, W, b)
print("forward matches:", np.allclose(out, y))

dx_l = np.full_like(x, 123.0)                     # garbage: dinp is overwritten
dW_l, db_l = np.zeros_like(W), np.zeros_like(b)
matmul_backward(dx_l, dW_l, db_l, dout, x, W)
print("backward matches:", np.allclose(dx_l, dx), np.allclose(dW_l, dW), np.allclose(db_l, db))

matmul_backward(dx_l, dW_l, db_l, dout, x, W)
print("second call: dinp overwritten", np.allclose(dx_l, dx), "| dweight accumulated", np.allclose(dW_l, 2 * dW))

matmul_forward(out, x, W, None)
print("without bias:", np.allclose(out, x @ W.T))

# %% [markdown]
# ## Where the arithmetic is
#
# A linear layer costs one multiply and one add per weight per row: $2\cdot C\cdot OC$ floating-point
# operations (FLOPs) per token. Its backward is two such products ($dX$ and $dW$), twice the forward.
# Hence the rule of thumb: training costs about $6N$ FLOPs per token for $N$ parameters (2 forward +
# 4 backward). Attention adds its own two products ($QK^\top$ and $PV$, notebook 04); everything else
# (layernorm, GELU, softmax, residual adds) costs a few operations per number, negligible next to
# these. For GPT-2 small, per token, forward only:

# %%
cfg = GPT2Config.preset("d12")
C12, L, Vp, T12 = cfg.channels, cfg.num_layers, cfg.padded_vocab_size, cfg.max_seq_len
flops = {                                          # forward FLOPs per token
    "qkv (C -> 3C)": L * 2 * C12 * 3 * C12,
    "attention proj (C -> C)": L * 2 * C12 * C12,
    "fc (C -> 4C)": L * 2 * C12 * 4 * C12,
    "fc proj (4C -> C)": L * 2 * 4 * C12 * C12,
    "attention QK^T and PV (causal)": L * 2 * C12 * T12,   # 2 products, T/2 keys on average, 2 FLOPs each
    "classifier (C -> Vp)": 2 * C12 * Vp,
}
total = sum(flops.values())
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.barh(list(flops)[::-1], [v / 1e6 for v in flops.values()][::-1])
ax.set_xlabel("MFLOP per token (forward)")
ax.set_title(f"GPT-2 small: {total / 1e6:.0f} MFLOP per token forward, ~{3 * total / 1e6:.0f} forward + backward")
plt.tight_layout()
plt.show()

# %% [markdown]
# How fast is this machine at it? One matmul of the size of GPT-2 small's attention projection, on
# 1024 tokens:

# %%
a = rng.normal(size=(1024, 768)).astype(np.float32)
w = rng.normal(size=(768, 768)).astype(np.float32)
a @ w.T                                            # warm up
start = time.perf_counter()
reps = 5
for _ in range(reps):
    a @ w.T
seconds = (time.perf_counter() - start) / reps
gflops = 2 * 1024 * 768 * 768 / seconds / 1e9
print(f"{seconds * 1e3:.1f} ms, {gflops:.0f} GFLOP/s on this CPU")
tokens = 4 * 1024
print(f"so one training step of GPT-2 small on B=4, T=1024 ({3 * total * tokens / 1e12:.1f} TFLOP) "
      f"would take ~{3 * total * tokens / (gflops * 1e9):.0f} s here")

# %% [markdown]
# An H100 GPU does dense bf16 matmuls at several hundred TFLOP/s, thousands of times more: that is
# what [notebook 10](10_cuda.ipynb) is about. On the GPU the products themselves go to cuBLAS, NVIDIA's
# matmul library; [llmnp/cuda/matmul.cu](../llmnp/cuda/matmul.cu) holds the small kernels around them:
# adding the bias, and summing `dout`'s rows into `dbias`.
#
# ## On the GPU: `dbias`, a sum over all rows, deterministic
#
# $db = \sum_n dy_n$ sums N = B·T rows, up to hundreds of thousands. One thread per column would
# leave most of the GPU idle; many threads adding into one column with atomics would add in a
# different order on every run. `matmul_backward_dbias_partial` cuts the rows into R ranges: block
# `(blockIdx.x, blockIdx.y)` takes 32·PACK columns and range `blockIdx.y`, its 8 rows of threads
# (`threadIdx.y`) striding over the range, and writes one row of partial sums to `partial[blockIdx.y]`;
# `matmul_backward_dbias_total` adds the R partials of each column with a block of 32 x 32 threads per
# 32 columns: thread `(x, y)` adds partials y, y + 32, ..., then the 32 sums are added in order
# (`column_sum` in `common.cuh`), the same order every run. In NumPy, with the loops the kernels are
# bodies of:

# %%
def dbias_two_passes(dout, R=3):
    N, OC = dout.shape
    rows_per_block = (N + R - 1) // R
    partial = np.zeros((R, OC))
    for by in range(R):                               # blockIdx.y (and blockIdx.x over the columns)
        for ty in range(8):                           # threadIdx.y: a stride of 8 rows
            for row in range(by * rows_per_block + ty, min(N, (by + 1) * rows_per_block), 8):
                partial[by] += dout[row]              # threadIdx.x: PACK columns each, all at once here
    dbias = np.zeros(OC)
    for col in range(OC):                             # matmul_backward_dbias_total: threadIdx.x (and blockIdx.x)
        sums = np.zeros(32)
        for ty in range(32):                          # threadIdx.y: partials ty, ty + 32, ...
            for k in range(ty, R, 32):
                sums[ty] += partial[k, col]
        for ty in range(32):                          # then the 32 sums, always in this order
            dbias[col] += sums[ty]
    return dbias


dy_rows = rng.normal(size=(50, OC))
print("two passes = the column sum:", np.allclose(dbias_two_passes(dy_rows), dy_rows.sum(axis=0)))

# %%
from kernels import GPU, compile_kernels, show

show("matmul", "matmul_backward_dbias_partial(", "store_column_partials(")
print()
show("matmul", "matmul_backward_dbias_total(", "dbias[col] =")
compile_kernels("matmul")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    g = np.random.default_rng(1)
    x32, w32, b32 = (g.normal(size=s).astype(np.float32) for s in [(4, 64, 768), (3072, 768), (3072,)])
    dy32 = g.normal(size=(4, 64, 3072)).astype(np.float32)
    dx_ref, dw_ref, db_ref = np.empty_like(x32), np.zeros_like(w32), np.zeros_like(b32)
    matmul_backward(dx_ref, dw_ref, db_ref, dy32, x32, w32)
    dx_gpu, dw_gpu, db_gpu = cp.empty(x32.shape, cp.float32), cp.zeros(w32.shape, cp.float32), cp.zeros(b32.shape, cp.float32)
    cuda.matmul_backward(dx_gpu, dw_gpu, db_gpu, cp.asarray(dy32), cp.asarray(x32), cp.asarray(w32))
    print(f"max |GPU - NumPy| / max |NumPy|: dx {float(abs(dx_gpu.get() - dx_ref).max() / abs(dx_ref).max()):.1e}, "
          f"dweight {float(abs(dw_gpu.get() - dw_ref).max() / abs(dw_ref).max()):.1e}, "
          f"dbias {float(abs(db_gpu.get() - db_ref).max() / abs(db_ref).max()):.1e}")
#
# Next: [04 attention](04_attention.ipynb), the only layer where positions talk to each other.
