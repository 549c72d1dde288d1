# %% [markdown]
# # 07 · The classifier: softmax and cross-entropy
#
# At the top, each position's vector becomes one score per vocabulary entry, the **logits** $z$,
# through a matmul with `wte` itself (the same table the encoder reads: "tied" weights, notebook 03 for
# the matmul). The softmax turns scores into probabilities, and the loss at a position is the negative
# log of the probability given to the token that really comes next, $y$:
# $$p_i = \frac{e^{z_i}}{\sum_{j<V} e^{z_j}}, \qquad \ell = -\log p_y, \qquad L = \frac{1}{B\,T}\sum_{b,t} \ell_{b,t}$$
# A perfect prediction ($p_y = 1$) costs 0; a uniform guess over V tokens costs $\ln V$.
#
# **Padded vocabulary.** The logits have Vp ≥ V columns (50304 for GPT-2's 50257 tokens: multiples of
# 128 make faster matmuls). Columns V…Vp−1 are not tokens: they are left out of the softmax, their
# probability is 0 and they get no gradient.
#
# The code: [llmnp/classifier.py](../llmnp/classifier.py); on the GPU: [llmnp/cuda/classifier.cu](../llmnp/cuda/classifier.cu).

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward, softmax_forward

rng = np.random.default_rng(0)
B, T, V, Vp = 2, 3, 5, 8
logits = rng.normal(size=(B, T, Vp))                 # (B,T,Vp); columns 5, 6, 7 are padding
targets = rng.integers(0, V, size=(B, T)).astype(np.int32)


# %% [markdown]
# ## Forward, from scratch
#
# Subtracting a row's maximum before `exp` changes nothing mathematically (it cancels between numerator
# and denominator) and keeps `exp` from overflowing:

# %%
def softmax_scratch(logits, V):
    z = logits[..., :V]                               # real tokens only
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    probs = np.zeros_like(logits)
    probs[..., :V] = e / e.sum(axis=-1, keepdims=True)
    return probs


def crossentropy_scratch(probs, targets):
    B, T = targets.shape
    return -np.log(probs[np.arange(B)[:, None], np.arange(T), targets])   # (B,T)


probs = softmax_scratch(logits, V)
losses = crossentropy_scratch(probs, targets)
print("rows sum to 1:", np.allclose(probs.sum(axis=-1), 1), "| padded columns:", probs[..., V:].max())
print("losses:\n", losses.round(3))

with np.errstate(over="ignore", invalid="ignore"):
    big = np.array([1000.0, 1001.0, 1002.0])
    print("naive softmax of", big, "->", np.exp(big) / np.exp(big).sum())
print("max-subtracted ->", softmax_scratch(big, 3).round(4))


# %% [markdown]
# ## Backward, step by step
#
# Write one position's loss in terms of the logits directly:
# $$\ell = -\log \frac{e^{z_y}}{\sum_j e^{z_j}} = -z_y + \log \sum_{j<V} e^{z_j}$$
#
# 1. The first term: $\partial(-z_y)/\partial z_i = -1$ if $i = y$, else 0.
# 2. The second: $\partial \log\sum_j e^{z_j} / \partial z_i = e^{z_i} / \sum_j e^{z_j} = p_i$.
#
# So
# $$\frac{\partial \ell}{\partial z_i} = p_i - [\,i = y\,]$$
# **prediction minus truth**. Each wrong token is pushed down in proportion to the probability it got;
# the right one is pushed up by $1 - p_y$; the pushes sum to zero. Going through the log and the softmax
# one after the other gives the same: the log's backward puts $dp_y = -1/p_y$ at the target and 0
# elsewhere, and the softmax backward of notebook 04, $dz_i = p_i\,(dp_i - \sum_j p_j\, dp_j)$, O(V) per
# row, turns that into $p_i - [\,i = y\,]$. Fused, the division by a possibly tiny $p_y$ and the
# second pass over the row are gone: one subtraction.
#
# The mean over the B·T positions multiplies every position's gradient by $1/(B\,T)$, `dloss` in the
# code (and by $1/\text{steps}$ more when several micro-batches are averaged, notebook 09).
# Padded columns $i \ge V$ do not appear in $\ell$: their gradient is 0.

# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from prediction minus truth, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/classifier.py](solutions/classifier.py),
# instead: the rest of the notebook uses whichever passed.
#
# Here `dloss` is the weight of each position's loss: $1/(B\,T)$ for the mean, and for the checker a
# random (B, T) array, its `dout`. Position (b, t)'s row of `dlogits` is its $p - \text{onehot}$ times
# its weight.

# %%
def crossentropy_softmax_backward_scratch(dloss, logits, targets, V):
    """dlogits (B,T,Vp) from dloss, a number or (B,T); 0 in the padded columns V..Vp-1."""
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import classifier as solution

crossentropy_softmax_backward_scratch = check_backward(
    lambda logits, targets, V: crossentropy_scratch(softmax_scratch(logits, V), targets),
    crossentropy_softmax_backward_scratch, dict(logits=logits, targets=targets, V=V), "logits",
    solution=solution.crossentropy_softmax_backward_scratch)
dloss = 1.0 / (B * T)
dlogits = crossentropy_softmax_backward_scratch(dloss, logits, targets, V)
print("each row of dlogits sums to 0:", np.allclose(dlogits.sum(axis=-1), 0))

# %%
b, t = 0, 0
fig, ax = plt.subplots(figsize=(7, 3))
cols = np.arange(Vp)
ax.bar(cols - 0.27, probs[b, t], 0.27, label="p (prediction)")
ax.bar(cols, np.eye(Vp)[targets[b, t]], 0.27, label="one-hot (truth)")
ax.bar(cols + 0.27, dlogits[b, t] / dloss, 0.27, label="p − one-hot (gradient)")
ax.axvspan(V - 0.5, Vp - 0.5, color="gray", alpha=0.15)
ax.text(V + (Vp - V) / 2 - 0.5, 0.8, "padding", ha="center", color="gray")
ax.axhline(0, color="black", lw=0.5)
ax.set_xticks(cols)
ax.set_xlabel(f"vocabulary column (target of this position: {targets[b, t]})")
ax.legend(loc="lower right", fontsize=8)
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

# %% [markdown]
# Here no random `dout` is needed: the mean loss is already a single number.

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
    return float(crossentropy_scratch(softmax_scratch(logits, V), targets).mean())


worst = gradcheck_table(loss, {"logits": (logits, dlogits)}, n=8)
assert worst < 1e-8

# %% [markdown]
# ## llmnp's classifier
#
# Training needs the loss and `dlogits`, never the probabilities themselves. So llmnp's loss,
# `crossentropy_forward(losses, lse, logits, targets, V)`, works from the logits directly, as the first
# line of the derivation above, $\ell = \log \sum_{j<V} e^{z_j} - z_y$ (the sum max-subtracted, as the
# softmax), leaves the logits as they are, and keeps that log-sum-exp, one number per position, in
# `lse`. Since $p_i = e^{z_i - \text{lse}}$, the fused
# `crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V)` recomputes the softmax from the
# logits in one pass and writes $(p - \text{onehot}) \cdot dloss$; `dlogits` may be the logits buffer
# itself, which is what the model passes, so no (B, T, Vp) buffer besides the logits is ever needed
# (after `backward()`, `model.logits` holds dlogits). `softmax_forward(probs, logits, V)` remains for
# sampling.

# %%
probs_l, losses_l, lse = np.empty_like(logits), np.empty((B, T)), np.empty((B, T))
softmax_forward(probs_l, logits, V)
crossentropy_forward(losses_l, lse, logits, targets, V)
print("forward matches:", np.allclose(probs_l, probs), np.allclose(losses_l, losses))

buf = logits.copy()                                                  # (B,T,Vp), as the model's logits
crossentropy_softmax_backward(buf, buf, lse, targets, dloss, V)      # in place: the logits become dlogits
print("backward matches, written over the logits:", np.allclose(buf, dlogits))

# %% [markdown]
# ## A fresh model's loss is ln V
#
# At initialization the logits are all close to 0, the softmax is nearly uniform, and the loss is
# nearly $\ln V$. This is the first number to check when training starts (notebook 09): 10.8 for
# GPT-2's 50257 tokens.

# %%
config = GPT2Config.tiny(vocab_size=100, max_seq_len=16)
model = GPT2(config, seed=0)
tokens = rng.integers(0, config.vocab_size, size=(4, 17))
loss0 = float(model.forward(tokens[:, :-1], tokens[:, 1:]))
print(f"fresh model: loss {loss0:.4f}, ln V = {np.log(config.vocab_size):.4f}")
print(f"GPT-2: ln 50257 = {np.log(50257):.2f}")

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/classifier.cu](../llmnp/cuda/classifier.cu): one block of threads per position
# (`row = blockIdx.x`; the loop it is the body of is `for row in range(B * T)`), its threads striding
# over the row's V logits. The loss kernel reads the row **once**: each thread keeps a running maximum
# $m$ and a running sum $s = \sum e^{z - m}$ of the columns it has seen, multiplying $s$ by
# $e^{m_\text{old} - m_\text{new}}$ whenever its maximum grows (attention's online softmax, notebook
# 04, without the values). Then the block agrees on the row's maximum (`block_max`) and adds the
# threads' sums, each first brought to that maximum (`block_sum`). In NumPy, for one row and a block of
# 8 threads:

# %%
def row_lse_block(z, threads=8):
    """log-sum-exp of one row z (V,) as crossentropy_forward_kernel's block computes it."""
    m, s = np.full(threads, -np.inf), np.zeros(threads)
    for i in range(threads):                          # threadIdx.x, all at once on the GPU
        for c in range(i, z.size, threads):           # its columns: i, i + threads, ...
            if z[c] > m[i]:
                s[i] *= np.exp(m[i] - z[c])           # rescale what it has summed so far
                m[i] = z[c]
            s[i] += np.exp(z[c] - m[i])
    row_m = m.max()                                   # block_max
    return row_m + np.log(np.sum(s * np.exp(m - row_m)))   # block_sum of the rescaled sums


z = 5 * rng.normal(size=(6, 1000))                     # six positions, V = 1000
lse_ref = np.empty((1, 6))
crossentropy_forward(np.empty((1, 6)), lse_ref, z[None], np.zeros((1, 6), np.int32), 1000)
lse_sim = np.array([row_lse_block(row) for row in z])  # for row in range(N): one block each
print("block simulation = crossentropy_forward's lse:", np.allclose(lse_sim, lse_ref[0]))

# %% [markdown]
# The kernel does the same with 16-byte packs (a thread takes PACK columns at a time and updates its
# maximum once per pack); `block_max` and `block_sum` (in `common.cuh`) are a `warp_sum` per warp
# (notebook 02), the warps' results passed through shared memory, and a last `warp_sum`:

# %%
from kernels import GPU, compile_kernels, show

show("classifier", "__device__ __forceinline__ void row_max_sum(", "m = row_m;")
print()
show("classifier", "crossentropy_forward_kernel(", "losses[row] =")
print()
show("common.cuh", "float block_sum(float v)", "return warp_sum(v);")

# %% [markdown]
# The backward kernel, `crossentropy_softmax_backward_kernel`, reads the row once more and writes
# `dlogits` over the logits, as here, with $p = e^{z - \text{lse}}$ from the saved `lse`: no maximum
# or sum over the row again. The (B, T, Vp) logits are the largest activation of the model (notebook
# 00), so every pass over them counts, and a probabilities buffer beside them would cost as much again
# (6.6 GB for GPT-2 small at B = 64, T = 1024 in bf16); llm.c's classifier is fused the same way.

# %%
compile_kernels("classifier")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    g = np.random.default_rng(1)
    Vg, Vpg = 50257, 50304
    logits32 = (3 * g.normal(size=(4, 64, Vpg))).astype(np.float32)
    targets32 = g.integers(0, Vg, size=(4, 64)).astype(np.int32)
    losses_ref, lse_ref = np.empty((4, 64), np.float32), np.empty((4, 64), np.float32)
    crossentropy_forward(losses_ref, lse_ref, logits32, targets32, Vg)
    losses_gpu, lse_gpu = cp.empty((4, 64), cp.float32), cp.empty((4, 64), cp.float32)
    cuda.crossentropy_forward(losses_gpu, lse_gpu, cp.asarray(logits32), cp.asarray(targets32), Vg)
    print(f"max |GPU - NumPy|: losses {float(abs(losses_gpu.get() - losses_ref).max()):.1e}, "
          f"lse {float(abs(lse_gpu.get() - lse_ref).max()):.1e}")

# %% [markdown]
# ## Training: the loss and dlogits in one pass, a block of rows at a time
#
# A training step needs the loss and `dlogits` of the same logits, one right after the other, so
# `crossentropy_forward_backward(losses, dlogits, logits, targets, dloss, V)` does both in one call:
# on the GPU one kernel that reads each row once, keeps it in shared memory while the block agrees on
# its maximum and sum, then writes `dlogits` from that copy (in NumPy, the two functions above one after
# the other). And since each row of logits is used only for its own loss and gradient,
# `model.forward_backward(inputs, targets)`, the call training makes, never holds all B*T rows: it
# makes the logits of `model.classifier_rows` rows (8,192) at a time, writes their loss and dlogits,
# runs the classifier's two products for those rows (adding wte's gradient into a float32 sum), and
# moves on. The gradients are forward + backward's:

# %%
x, y = tokens[:, :-1], tokens[:, 1:]                   # (4, 16): 64 rows
whole, blocks = GPT2(config, seed=0), GPT2(config, seed=0)
blocks.classifier_rows = 10                            # blocks of 10, 10, ..., 4 rows
for m in (whole, blocks):
    m.zero_grad()
whole.forward(x, y)
whole.backward()
loss_blocks = float(blocks.forward_backward(x, y))
print("logits held:", whole.acts["logits"].shape, "against", blocks.acts["logits"].shape)
print("same loss:", np.isclose(loss_blocks, float(whole.acts["losses"].mean())),
      "same gradients:", np.allclose(blocks.grads_memory, whole.grads_memory))

# %% [markdown]
# Next: [08 adamw](08_adamw.ipynb), what to do with the gradients.
