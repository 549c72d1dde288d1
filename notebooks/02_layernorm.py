# %% [markdown]
# # 02 · LayerNorm
#
# Every block reads the residual stream through a layernorm, and one more sits before the classifier.
# It rescales each token's vector of C numbers to mean 0 and variance 1, then applies a learned scale
# $w$ and shift $b$ per channel. Whatever the scale the residual stream grows to, the layer after it
# sees inputs of a fixed size.
#
# For one position (one row of C numbers $x_1 \dots x_C$):
# $$\mu = \frac{1}{C}\sum_{i} x_i, \qquad
# \sigma^2 = \frac{1}{C}\sum_{i} (x_i - \mu)^2, \qquad
# r = \frac{1}{\sqrt{\sigma^2 + \epsilon}}$$
# $$\hat{x}_i = (x_i - \mu)\, r, \qquad y_i = w_i\, \hat{x}_i + b_i$$
# with $\epsilon = 10^{-5}$ and the biased variance (divide by C, not C−1), as PyTorch and llm.c.
# $r$ is the *reciprocal standard deviation*, `rstd` in the code. Forward saves $\mu$ and $r$ for
# each position, (B, T) each, so backward does not recompute them.
#
# The code: [llmnp/layernorm.py](../llmnp/layernorm.py); on the GPU: [llmnp/cuda/layernorm.cu](../llmnp/cuda/layernorm.cu).

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp.layernorm import layernorm_backward, layernorm_forward

rng = np.random.default_rng(0)
B, T, C = 2, 3, 8
x = 3 * rng.normal(size=(B, T, C)) + 1       # (B,T,C) an input with some offset and scale
w = 1 + 0.1 * rng.normal(size=C)              # (C,)
b = 0.1 * rng.normal(size=C)                  # (C,)


# %% [markdown]
# ## Forward, from scratch

# %%
def layernorm_forward_scratch(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)                   # (B,T,1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)    # biased variance
    rstd = 1 / np.sqrt(var + eps)
    norm = (x - mean) * rstd                                # (B,T,C): mean 0, variance 1 per row
    return norm * w + b, mean[..., 0], rstd[..., 0]


y, mean, rstd = layernorm_forward_scratch(x, w, b)
print("row means before:", x.mean(axis=-1).round(3).ravel())
print("row std before:  ", x.std(axis=-1).round(3).ravel())
norm = (x - mean[..., None]) * rstd[..., None]
print("normalized rows: mean", np.abs(norm.mean(axis=-1)).max().round(12), " std", norm.std(axis=-1).round(5).ravel())

# %% [markdown]
# ### What it does to the statistics
#
# Below, 300 rows of C = 64 numbers, each with its own offset and scale, as rows of a residual stream
# have. Before: every row has a different mean and standard deviation. After layernorm (with $w = 1$,
# $b = 0$): all rows sit at mean 0 and standard deviation 1. The learned $w$ and $b$ then choose the
# scale and offset per channel.

# %%
rows = rng.normal(size=(300, 64)) * rng.uniform(0.2, 4, size=(300, 1)) + rng.normal(0, 2, size=(300, 1))
normed, _, _ = layernorm_forward_scratch(rows, np.ones(64), np.zeros(64))

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True, sharey=True)
for ax, data, title in [(axes[0], rows, "before layernorm"), (axes[1], normed, "after")]:
    ax.scatter(data.mean(axis=1), data.std(axis=1), s=8, alpha=0.6)
    ax.set_title(title)
    ax.set_xlabel("mean of a row")
axes[0].set_ylabel("standard deviation of a row")
plt.tight_layout()
plt.show()


# %% [markdown]
# ## Backward, node by node
#
# Backward gets `dout` $= \partial L/\partial y$ (B, T, C) and must produce $\partial L/\partial x$,
# $\partial L/\partial w$, $\partial L/\partial b$. Write $dz$ for $\partial L/\partial z$.
#
# The safest way through is to write the forward as a chain of small steps, each one line, and undo
# them one at a time from the end. Every intermediate gets its gradient, and every one of those can be
# checked on its own: nudge that intermediate (and let the rest of the forward run on from it), see
# how $L = \sum y \odot \text{dout}$ moves. `nudge` below does that.

# %%
def layernorm_chain(x, w, b, nudge={}, eps=1e-5):
    """The forward, one named intermediate per line; nudge = {name: array} adds to that intermediate
    as soon as it is computed, so everything after it sees the change."""
    v = {}

    def node(name, value):
        v[name] = value + nudge.get(name, 0.0)
        return v[name]

    mu = node("mu", x.mean(axis=-1, keepdims=True))                # (B,T,1)
    xc = node("xc", x - mu)                                        # (B,T,C) centred
    var = node("var", (xc ** 2).mean(axis=-1, keepdims=True))      # (B,T,1)
    rstd = node("rstd", (var + eps) ** -0.5)                       # (B,T,1)
    norm = node("norm", xc * rstd)                                 # (B,T,C)
    node("y", norm * w + b)                                        # (B,T,C)
    return v


v = layernorm_chain(x, w, b)
dout = rng.normal(size=(B, T, C))

# backward, the forward lines read from the bottom up
d = {"y": dout}
dw_nodes = (dout * v["norm"]).sum(axis=(0, 1))               # y = norm * w + b: w and b serve every (b, t)
db_nodes = dout.sum(axis=(0, 1))
d["norm"] = dout * w
d["rstd"] = (d["norm"] * v["xc"]).sum(-1, keepdims=True)     # norm = xc * rstd: one rstd for the whole row
d["var"] = d["rstd"] * -0.5 * (v["var"] + 1e-5) ** -1.5      # rstd = (var + eps)^(-1/2)
d["xc"] = d["norm"] * v["rstd"] + d["var"] * 2 * v["xc"] / C  # xc feeds norm and var: the two add
d["mu"] = -d["xc"].sum(-1, keepdims=True)                    # xc = x - mu
d["x"] = d["xc"] + d["mu"] / C                               # x feeds xc and mu = mean(x): the two add

# the check, at every intermediate: nudge it along a random direction r, both ways
print(f"{'node':>6} {'numeric':>14} {'analytic':>14} {'error':>9}")
for name in ["y", "norm", "rstd", "var", "xc", "mu", "x"]:
    r = rng.normal(size=d[name].shape)
    if name == "x":
        L = lambda s: np.sum(layernorm_chain(x + s * r, w, b)["y"] * dout)   # noqa: E731
    else:
        L = lambda s: np.sum(layernorm_chain(x, w, b, {name: s * r})["y"] * dout)   # noqa: E731
    numeric, analytic = (L(1e-6) - L(-1e-6)) / 2e-6, np.sum(d[name] * r)
    print(f"{name:>6} {numeric:14.8f} {analytic:14.8f} {abs(numeric - analytic):9.1e}")
    assert abs(numeric - analytic) < 1e-7 * max(1, abs(analytic))

# %% [markdown]
# Two lines do the real work, and both are the rule "a value read in two places gets the sum of both
# gradients": `xc` is read by `norm` and by `var`, and `x` by `xc` and by `mu`. Forget either sum and
# the check above flags that node and every one below it.
#
# ## The simplification: one formula
#
# Seven lines and five temporaries per row is a lot to run for every position of every layer. The same
# derivative, worked on paper into one expression, needs only $\hat{x}$ (`norm`) and two means per row.
# Work on one row; the rows of different positions do not interact (except through $w$ and $b$, step 1).
#
# **Step 1, the affine part** $y_i = w_i \hat{x}_i + b_i$. Each $w_i$ and $b_i$ is used at every
# position, so their gradients sum over all (b, t):
# $$db_i = \sum_{b,t} dy_i, \qquad dw_i = \sum_{b,t} dy_i\,\hat{x}_i, \qquad d\hat{x}_i = dy_i\, w_i$$
#
# **Step 2, the hard part.** $\hat{x}_j = (x_j - \mu)\,r$ depends on every $x_i$ of its row in three
# ways: directly, through $\mu$, and through $r$. The pieces:
# - $\partial \mu / \partial x_i = 1/C$.
# - $\partial \sigma^2 / \partial x_i = \frac{2}{C}\sum_j (x_j - \mu)(\delta_{ij} - \frac{1}{C})
#   = \frac{2}{C}(x_i - \mu)$; the $\frac1C$ part drops out because $\sum_j (x_j - \mu) = 0$.
# - $\partial r / \partial x_i = -\frac{1}{2}(\sigma^2 + \epsilon)^{-3/2}\,\partial\sigma^2/\partial x_i
#   = -r^3 (x_i - \mu)/C = -r^2\,\hat{x}_i / C$.
#
# Product rule on $\hat{x}_j = (x_j - \mu)\, r$:
# $$\frac{\partial \hat{x}_j}{\partial x_i} = r\left(\delta_{ij} - \frac{1}{C}\right) + (x_j - \mu)\frac{\partial r}{\partial x_i}
# = r\left(\delta_{ij} - \frac{1}{C} - \frac{\hat{x}_j\,\hat{x}_i}{C}\right)$$
#
# **Step 3, chain rule** over the $j$ of the row:
# $$dx_i = \sum_j d\hat{x}_j \frac{\partial \hat{x}_j}{\partial x_i}
# = r\left( d\hat{x}_i \;-\; \frac{1}{C}\sum_j d\hat{x}_j \;-\; \hat{x}_i\,\frac{1}{C}\sum_j d\hat{x}_j\,\hat{x}_j \right)$$
#
# **Reading the result.** Take $d\hat{x}$, remove its mean (its component along the all-ones
# direction) and its component along $\hat{x}$, then scale by $r$. That makes sense: shifting a row
# $x$ by a constant, or stretching it about its mean, leaves $\hat{x}$ unchanged, so the loss cannot
# depend on those two directions and the gradient has no component along them. Backward needs only
# $x$, $w$ and the saved $\mu$, $r$. (Stretching changes $\hat{x}$ a tiny bit through $\epsilon$, so that
# second component is small rather than exactly zero: a cosine of order $\epsilon/\sigma^2$.)

# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from step 3's formula (the node-by-node version above is a way to check it, not the answer), then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/layernorm.py](solutions/layernorm.py),
# instead: the rest of the notebook uses whichever passed.

# %%
def layernorm_backward_scratch(dout, x, w, b):
    """dx (B,T,C), dw (C,), db (C,) from dout (B,T,C), by the one formula."""
    mean = x.mean(axis=-1, keepdims=True)                 # the statistics forward saved, recomputed
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
    norm = (x - mean) * rstd                              # x hat
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import layernorm as solution

layernorm_backward_scratch = check_backward(lambda x, w, b: layernorm_forward_scratch(x, w, b)[0],
                                            layernorm_backward_scratch, dict(x=x, w=w, b=b), ("x", "w", "b"),
                                            solution=solution.layernorm_backward_scratch)
dx, dw, db = layernorm_backward_scratch(dout, x, w, b)
print("the formula = the node-by-node backward:", np.allclose(dx, d["x"]), np.allclose(dw, dw_nodes),
      np.allclose(db, db_nodes))


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


print("dx along the shift direction (1, 1, ..., 1), largest over rows:", np.abs(dx.sum(axis=-1)).max())
print("dx along the stretch direction x - mean, largest over rows:    ",
      np.abs((unit(dx) * unit(x - mean[..., None])).sum(axis=-1)).max())


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
    return float(np.sum(layernorm_forward_scratch(x, w, b)[0] * dout))


worst = gradcheck_table(loss, {"x": (x, dx), "w": (w, dw), "b": (b, db)})
assert worst < 1e-7

# %% [markdown]
# ## llmnp's layernorm
#
# `layernorm_forward(out, mean, rstd, inp, weight, bias)` writes the output and the two statistics;
# `layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)` **adds** into all three
# gradients. `dweight` and `dbias` accumulate as every parameter gradient does. `dinp` accumulates
# too: a layernorm's input is the residual stream, whose gradient is the sum over every path that reads
# it (notebook 06), so the model lets each layernorm add its share into one buffer.

# %%
out, mean_l, rstd_l = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
layernorm_forward(out, mean_l, rstd_l, x, w, b)
print("forward matches:", np.allclose(out, y), np.allclose(mean_l, mean), np.allclose(rstd_l, rstd))

dx_l, dw_l, db_l = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
layernorm_backward(dx_l, dw_l, db_l, dout, x, w, mean_l, rstd_l)
print("backward matches:", np.allclose(dx_l, dx), np.allclose(dw_l, dw), np.allclose(db_l, db))

dx_l[...] = 1.0                                      # whatever the buffer held before ...
layernorm_backward(dx_l, dw_l, db_l, dout, x, w, mean_l, rstd_l)
print("dinp accumulates:", np.allclose(dx_l, 1.0 + dx))  # ... gets the gradient added on top

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/layernorm.cu](../llmnp/cuda/layernorm.cu) gives each row of C numbers to one **warp**, 32
# threads that run in lockstep: `row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32`, so a block
# of 256 threads does 8 rows, and the loop the kernel is the body of is `for row in range(N)`, one warp
# per row. Inside the row, lane `l` (0..31) sums the PACK = 4 floats at columns `l*PACK ..` of each
# 128-wide chunk (one 16-byte load each), and then the 32 partial sums are combined **across the warp**
# without touching memory: `__shfl_xor_sync(mask, v, o)` hands each lane the value of lane `l ^ o`.
# Five rounds, o = 16, 8, 4, 2, 1, and every lane holds the total (a butterfly). In NumPy, for one row:

# %%
def warp_sum(v):
    """v: one number per lane (32,). Each round, lane l adds lane l ^ o's value."""
    lanes = np.arange(32)
    for o in (16, 8, 4, 2, 1):
        v = v + v[lanes ^ o]
    return v                                          # every lane: the sum of all 32


def layernorm_row_warp(x, PACK=4):
    """mean and rstd of one row x (C,) as one warp of layernorm_forward_kernel computes them."""
    C = x.size
    part = np.zeros(32)
    for lane in range(32):                            # in lockstep on the GPU
        for c in range(lane * PACK, C, 32 * PACK):    # its packs of each 32*PACK-wide chunk
            part[lane] += x[c:c + PACK].sum()
    m = warp_sum(part) / C                            # the same value in every lane
    part = np.zeros(32)
    for lane in range(32):                            # a second pass over the row: the variance
        for c in range(lane * PACK, C, 32 * PACK):
            part[lane] += ((x[c:c + PACK] - m[lane]) ** 2).sum()
    r = 1 / np.sqrt(warp_sum(part) / C + 1e-5)
    assert np.all(m == m[0]) and np.all(r == r[0])    # the butterfly leaves all lanes agreeing
    return m[0], r[0]


rows = rng.normal(size=(6, 200)) * 3 + 1              # C = 200: one full 128-chunk and a partial one
m_ref, r_ref = np.empty(6), np.empty(6)
layernorm_forward(np.empty_like(rows), m_ref, r_ref, rows, np.ones(200), np.zeros(200))
warp = np.array([layernorm_row_warp(row) for row in rows])     # for row in range(N): one warp each
print("warp simulation = layernorm_forward:", np.allclose(warp[:, 0], m_ref), np.allclose(warp[:, 1], r_ref))

# %% [markdown]
# The kernel: `warp_sum` from `common.cuh`, then the row function (three passes over the row, the
# last writing the output) and the kernel that picks the row:

# %%
from kernels import GPU, compile_kernels, show

show("common.cuh", "float warp_sum(", "return v;")
print()
show("layernorm", "__device__ __forceinline__ void layernorm_row(", "const float r = ")
print()
show("layernorm", "layernorm_forward_kernel(", "layernorm_row(out + at")

# %% [markdown]
# The backward has the same shape: one warp per row for `dinp`, with two `warp_sum`s for the two means
# of step 3. `dweight` and `dbias` are sums over **all** rows, so no one warp can make them: each block
# writes its rows' partial sums to a scratch row of its own, and a second kernel adds those rows up, in
# the same order every time (adding floats in another order gives other roundings, so atomic adds
# would make every run's gradient differ in its last bits).

# %%
compile_kernels("layernorm")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    g = np.random.default_rng(1)
    x32 = (3 * g.normal(size=(4, 64, 768)) + 1).astype(np.float32)
    w32, b32 = g.normal(size=768).astype(np.float32), g.normal(size=768).astype(np.float32)
    ref, m_ref, r_ref = np.empty_like(x32), np.empty((4, 64), np.float32), np.empty((4, 64), np.float32)
    layernorm_forward(ref, m_ref, r_ref, x32, w32, b32)
    out_gpu, m_gpu, r_gpu = cp.empty(x32.shape, cp.float32), cp.empty((4, 64), cp.float32), cp.empty((4, 64), cp.float32)
    cuda.layernorm_forward(out_gpu, m_gpu, r_gpu, cp.asarray(x32), cp.asarray(w32), cp.asarray(b32))
    print(f"max |GPU - NumPy|: out {float(abs(out_gpu.get() - ref).max()):.1e}, "
          f"mean {float(abs(m_gpu.get() - m_ref).max()):.1e}, rstd {float(abs(r_gpu.get() - r_ref).max()):.1e}")

# %% [markdown]
# Next: [03 matmul](03_matmul.ipynb), where almost all of the model's arithmetic happens.
