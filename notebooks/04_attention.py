# %% [markdown]
# # 04 · Causal self-attention
#
# Every other layer works on each position alone. Attention is where a position gathers information
# from the positions before it. Each position emits three vectors: a **query** $q$ ("what am I looking
# for"), a **key** $k$ ("what do I contain") and a **value** $v$ ("what I pass on"). Position $t$ scores
# every earlier position $s$ by $q_t \cdot k_s$, turns the scores into weights with a softmax, and
# outputs the weighted average of the values. For one head, with head size $hs$:
# $$S_{ts} = \frac{q_t \cdot k_s}{\sqrt{hs}}\ \ (s \le t), \qquad S_{ts} = -\infty\ \ (s > t)$$
# $$P_{ts} = \frac{e^{S_{ts}}}{\sum_{s'} e^{S_{ts'}}}, \qquad y_t = \sum_s P_{ts}\, v_s$$
#
# - **Causal**: position $t$ only sees $s \le t$. The model is trained to predict token $t+1$ at every
#   position at once; if position $t$ could see $t+1$ it would just copy it. $-\infty$ becomes a weight
#   of exactly 0.
# - **$\sqrt{hs}$**: a dot product of $hs$ unit-variance numbers has variance $hs$; dividing keeps the
#   scores near unit size so the softmax does not saturate at initialization.
# - **Heads**: the C channels are split into NH heads of $hs = C/NH$ channels, each attending on its
#   own; their outputs are concatenated back to C channels.
#
# The input is the qkv matmul's output, (B, T, 3C): Q, K and V blocks of C channels each, head $h$
# being channels $h\cdot hs \dots (h+1)\cdot hs$ of each block.
#
# The code: [llmnp/attention.py](../llmnp/attention.py); on the GPU: [llmnp/cuda/attention.cu](../llmnp/cuda/attention.cu).

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp.attention import attention_backward, attention_forward

rng = np.random.default_rng(0)


# %% [markdown]
# ## Forward, from scratch
#
# One head first, then the bookkeeping that cuts qkv into heads.

# %%
def attention_head_scratch(q, k, v):
    """One head: q, k, v (T,hs) -> y (T,hs) and the attention weights P (T,T)."""
    T, hs = q.shape
    S = q @ k.T / np.sqrt(hs)                                 # (T,T) scores
    S[np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf    # no looking at the future
    P = np.exp(S - S.max(axis=1, keepdims=True))              # max-subtracted: no overflow
    P /= P.sum(axis=1, keepdims=True)                         # each row sums to 1
    return P @ v, P


def split_heads(qkv, NH):
    """(B,T,3C) -> q, k, v, each (B,NH,T,hs)."""
    B, T, C3 = qkv.shape
    hs = C3 // 3 // NH
    return qkv.reshape(B, T, 3, NH, hs).transpose(2, 0, 3, 1, 4)


def attention_forward_scratch(qkv, NH):
    B, T, C3 = qkv.shape
    C, hs = C3 // 3, C3 // 3 // NH
    q, k, v = split_heads(qkv, NH)
    out = np.empty((B, T, C))
    for b in range(B):
        for h in range(NH):
            out[b, :, h * hs:(h + 1) * hs] = attention_head_scratch(q[b, h], k[b, h], v[b, h])[0]
    return out                                                # heads side by side


# %% [markdown]
# `split_heads` is only a reshape and a transpose, no copy of the numbers' values: qkv's C·3 channels
# of one position are Q's C, then K's, then V's, and within each block head h has channels
# h·hs .. (h+1)·hs. Below, for C = 8, NH = 2, hs = 4 and T = 3, each cell shows its channel number:
# left, one batch row of qkv (T, 3C); right, where those numbers land in (3, NH, T, hs).

# %%
T_, NH_, hs_ = 3, 2, 4
C_ = NH_ * hs_
channel = np.tile(np.arange(3 * C_), (1, T_, 1)).astype(float)         # (1,T,3C): each cell its channel
colour = (np.arange(3 * C_) // hs_)[None, None, :].repeat(T_, axis=1)   # q h0, q h1, k h0, ... = 0..5
split_channel, split_colour = split_heads(channel, NH_), split_heads(colour, NH_)   # (3,1,NH,T,hs)

fig = plt.figure(figsize=(11, 2.8))
ax = fig.add_axes([0.02, 0.15, 0.5, 0.65])
ax.imshow(colour[0], cmap="tab10", vmin=0, vmax=9, alpha=0.6)
for t in range(T_):
    for c in range(3 * C_):
        ax.text(c, t, int(channel[0, t, c]), ha="center", va="center", fontsize=7)
ax.set_xticks([hs_ * i + (hs_ - 1) / 2 for i in range(3 * NH_)],
              [f"{'qkv'[i // NH_]} head {i % NH_}" for i in range(3 * NH_)], fontsize=8)
ax.set_yticks(range(T_), [f"t={t}" for t in range(T_)])
ax.set_title("qkv[b]: (T, 3C)", fontsize=10)
for i, name in enumerate("qkv"):
    for h in range(NH_):
        ax = fig.add_axes([0.54 + 0.066 * (2 * i + h) + 0.015 * i, 0.15, 0.06, 0.65])
        ax.imshow(split_colour[i, 0, h], cmap="tab10", vmin=0, vmax=9, alpha=0.6)
        for t in range(T_):
            for d in range(hs_):
                ax.text(d, t, int(split_channel[i, 0, h, t, d]), ha="center", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}[b, {h}]", fontsize=8)
fig.text(0.75, 0.9, "split_heads: (NH, T, hs) each for q, k, v", ha="center", fontsize=10)
plt.show()


# %% [markdown]
# ## Attention patterns
#
# $P$ is a (T, T) matrix per head: row $t$ says where position $t$ looks. Causality makes it lower
# triangular. The queries and keys below are built by hand to show three patterns trained heads are
# known to learn, and a fourth head with random queries and keys of the size GPT-2's initialization
# gives them:
# - *previous token*: keys encode their position, each query asks for position $t-1$;
# - *first token*: every query matches the key of position 0 (a resting place when nothing else fits);
# - *uniform*: queries of zero score every key alike, so a position averages all its past;
# - *at initialization*: a layernorm output (unit variance in each of GPT-2 small's C = 768 channels)
#   times qkv weights drawn from $N(0, 0.02^2)$ gives query and key entries of variance
#   $768 \cdot 0.02^2 \approx 0.31$, so scores $q \cdot k / \sqrt{hs}$ of standard deviation about 0.3
#   whatever $hs$ is. That barely moves a softmax: an untrained head is close to uniform, and the
#   sharper patterns are learned.

# %%
T, hs = 12, 16
position = np.eye(T, hs)                       # key s = one-hot of s: "I am at position s"
init_std = 0.02 * np.sqrt(768)                 # q and k entries at GPT-2 small's initialization
heads = {
    "previous token": (8 * np.sqrt(hs) * np.roll(position, 1, axis=0), position),   # q_t asks for t-1
    "first token": (8 * np.sqrt(hs) * np.tile(position[0], (T, 1)), position),
    "uniform": (np.zeros((T, hs)), position),
    "at initialization": (init_std * rng.normal(size=(T, hs)), init_std * rng.normal(size=(T, hs))),
}
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
for ax, (title, (q, k)) in zip(axes, heads.items()):
    _, P = attention_head_scratch(q, k, rng.normal(size=(T, hs)))
    ax.imshow(P, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(0, T, 2))
    ax.set_yticks(range(0, T, 2))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("key position s")
axes[0].set_ylabel("query position t")
plt.tight_layout()
plt.show()


# %% [markdown]
# ## Backward, step by step
#
# For one head, backward gets $dy$ (T, hs) and must produce $dq$, $dk$, $dv$. The forward chain is
# $q, k \to S \to P \to y$ (with $v$ joining at the end), so undo it in reverse.
#
# **Step 1, $y = P v$.** A matrix product, exactly as in notebook 03:
# $$dv = P^\top dy, \qquad dP = dy\, v^\top$$
#
# **Step 2, the softmax, row by row.** Within a row $t$, $P_{s'} = e^{S_{s'}} / \sum e^{S}$ depends
# on every $S_s$ of the row:
# $$\frac{\partial P_{s'}}{\partial S_s} = P_{s'}\,(\delta_{ss'} - P_s)$$
# (the $\delta$ from the numerator, the $-P_s$ from the normalizing sum). Chain rule over $s'$:
# $$dS_s = \sum_{s'} dP_{s'}\, P_{s'}(\delta_{ss'} - P_s) = P_s\Big(dP_s - \sum_{s'} P_{s'}\, dP_{s'}\Big)$$
#
# **Step 3, a shortcut.** The row sum in step 2 does not need $dP$ at all:
# $$\sum_{s'} P_{ts'}\, dP_{ts'} = \sum_{s'} P_{ts'}\, (dy_t \cdot v_{s'}) = dy_t \cdot \sum_{s'} P_{ts'} v_{s'} = dy_t \cdot y_t$$
# one dot product of $hs$ numbers, from the output forward already has.
#
# **Step 4, the mask needs no code.** Where $s > t$, $P_{ts} = 0$, so $dS_{ts} = 0$: no gradient flows
# to future positions, just as no information did.
#
# **Step 5, $S = q k^\top / \sqrt{hs}$.** Another matrix product:
# $$dq = dS\, k / \sqrt{hs}, \qquad dk = dS^\top q / \sqrt{hs}$$

# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from steps 1 to 5, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/attention.py](solutions/attention.py),
# instead: the rest of the notebook uses whichever passed.

# %%
def attention_head_backward_scratch(dy, q, k, v):
    """dq, dk, dv (T,hs) from dy (T,hs)."""
    y, P = attention_head_scratch(q, k, v)                # forward again, for P (the model keeps only lse)
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import attention as solution

T, hs = 5, 4
q, k, v = rng.normal(size=(3, T, hs))
attention_head_backward_scratch = check_backward(lambda q, k, v: attention_head_scratch(q, k, v)[0],
                                                 attention_head_backward_scratch, dict(q=q, k=k, v=v),
                                                 ("q", "k", "v"), solution=solution.attention_head_backward_scratch)
y, P = attention_head_scratch(q, k, v)
dy = rng.normal(size=(T, hs))
dq, dk, dv = attention_head_backward_scratch(dy, q, k, v)
print("step 3's shortcut equals the full row sum:", np.allclose((P * (dy @ v.T)).sum(axis=1), (dy * y).sum(axis=1)))
print("the last value is read only by the last query, so its gradient is P[-1,-1] dy[-1]:",
      np.allclose(dv[-1], P[-1, -1] * dy[-1]))


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
    return float(np.sum(attention_head_scratch(q, k, v)[0] * dy))


worst = gradcheck_table(loss, {"q": (q, dq), "k": (k, dk), "v": (v, dv)})
assert worst < 1e-7

# %% [markdown]
# ## Not storing P: the log-sum-exp
#
# Backward needs $P$, a (T, T) matrix per head per sequence per layer. For GPT-2 small at B = 4,
# T = 1024 that is large; so `llmnp` (like flash attention) saves only the log of each row's
# normalizing sum,
# $$\ell_t = \log \sum_{s} e^{S_{ts}}, \qquad\text{so that}\qquad P_{ts} = e^{S_{ts} - \ell_t},$$
# T numbers per head, and backward recomputes $S$ (one small matmul) and $P$ from it.

# %%
B4, T4, NH12, L12 = 4, 1024, 12, 12
print(f"P for all layers: {L12 * B4 * NH12 * T4 * T4 * 4 / 2**30:.2f} GiB;  "
      f"the log-sum-exp instead: {L12 * B4 * NH12 * T4 * 4 / 2**20:.2f} MiB")

S = q @ k.T / np.sqrt(hs)
S[np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
lse = np.log(np.exp(S).sum(axis=1))                 # what forward keeps: T numbers
print("P recomputed from the scores and lse:", np.allclose(np.exp(S - lse[:, None]), P))

# %% [markdown]
# ## llmnp's attention
#
# `attention_forward(out, lse, qkv)` writes the output (B, T, C) and the log-sum-exp (B, NH, T);
# `attention_backward(dqkv, dout, qkv, out, lse)` recomputes $P$ and overwrites `dqkv` (B, T, 3C):
# its input is the qkv matmul's output, read by nothing else. Below, the multi-head version is checked
# against the single-head scratch functions, head by head.

# %%
B, T, NH, hs = 2, 6, 3, 4
C = NH * hs
qkv = rng.normal(size=(B, T, 3 * C))
out, lse = np.empty((B, T, C)), np.empty((B, NH, T))
attention_forward(out, lse, qkv)
print("forward matches:", np.allclose(out, attention_forward_scratch(qkv, NH)))

dout = rng.normal(size=(B, T, C))
dqkv = np.empty_like(qkv)
attention_backward(dqkv, dout, qkv, out, lse)

expected = np.zeros((B, T, 3, NH, hs))              # the same (B,T,3C) layout, heads split out
q, k, v = split_heads(qkv, NH)
for b in range(B):
    for h in range(NH):
        _, P = attention_head_scratch(q[b, h], k[b, h], v[b, h])
        dy = dout[b, :, h * hs:(h + 1) * hs]
        for i, g in enumerate(attention_head_backward_scratch(dy, q[b, h], k[b, h], v[b, h])):
            expected[b, :, i, h] = g                 # i = 0, 1, 2: the Q, K, V blocks
print("backward matches:", np.allclose(dqkv, expected.reshape(B, T, 3 * C)))

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/attention.cu](../llmnp/cuda/attention.cu) computes the same thing, flash-attention
# style. The (T, T) scores are the expensive part: two matmuls per head, $QK^\top$ and $PV$, of
# $T \times T \times hs$ each, and recomputing $S$ in backward adds more. The kernels never write $S$
# or $P$ to memory at all.
#
# **The online softmax.** In `attention_forward_fp32`, one thread owns one query $t$ of one head
# and walks over the keys $0..t$ once, a tile of 32 keys at a time (the block loads each tile of $k$
# and $v$ into shared memory for its 64 queries). It never has a whole row of scores: it keeps a
# running maximum $m$, a running sum $l = \sum e^{s - m}$ and a running output $o = \sum e^{s - m} v$.
# When a new score raises the maximum, the sum and the output so far are rescaled by
# $e^{m_\text{old} - m_\text{new}}$, so they always read as if $m$ had been the maximum from the start.
# At the end $y = o / l$ and $\ell = m + \log l$, the log-sum-exp backward needs. In NumPy:

# %%
def attention_query_online(q, K, V, t):
    """One thread's loop: query t (hs,) against keys and values K, V (T,hs) up to t. Returns y, lse."""
    q = q / np.sqrt(q.size)
    m, l, o = -np.inf, 0.0, np.zeros(q.size)
    for j in range(t + 1):                       # on the GPU in tiles of 32 keys from shared memory
        s = q @ K[j]
        m_new = max(m, s)
        corr, p = np.exp(m - m_new), np.exp(s - m_new)   # corr rescales what was summed so far
        l = l * corr + p
        o = o * corr + p * V[j]
        m = m_new
    return o / l, m + np.log(l)


# the loop the kernel is the body of: grid (T / 64, B * NH), 64 threads a block, one query each
qs, ks, vs = split_heads(qkv, NH)
y_sim, lse_sim = np.empty((B, T, C)), np.empty((B, NH, T))
for bh in range(B * NH):                         # blockIdx.y
    b, h = bh // NH, bh % NH
    for t in range(T):                           # blockIdx.x * 64 + threadIdx.x
        y_sim[b, t, h * hs:(h + 1) * hs], lse_sim[b, h, t] = attention_query_online(qs[b, h, t], ks[b, h], vs[b, h], t)
print("online softmax = attention_forward:", np.allclose(y_sim, out), " lse:", np.allclose(lse_sim, lse))

# %% [markdown]
# The running state of one query, key by key: $m$ only grows, $l$ drops whenever $m$ jumps (the old
# terms are rescaled) and grows otherwise; the last line is the row's log-sum-exp.

# %%
q1 = qs[0, 0, T - 1] / np.sqrt(hs)
m, l = -np.inf, 0.0
print(f"{'key':>4} {'score':>8} {'m':>8} {'l':>8} {'m + log l':>10}")
for j in range(T):
    s = q1 @ ks[0, 0, j]
    m_new = max(m, s)
    l = l * np.exp(m - m_new) + np.exp(s - m_new)
    m = m_new
    print(f"{j:>4} {s:8.4f} {m:8.4f} {l:8.4f} {m + np.log(l):10.4f}")
print(f"lse of this row from attention_forward: {lse[0, 0, T - 1]:.4f}")

# %% [markdown]
# The kernel's inner loop is those lines, in C:

# %%
from kernels import GPU, compile_kernels, show

show("attention", "attention_forward_fp32(", "const float scale")
print("...")
show("attention", "float m = -INFINITY, l = 0.0f;", "lse[(long long)bh * T + t]")

# %% [markdown]
# The backward starts by computing $D_t = dy_t \cdot y_t$ for every row (`attention_backward_rowdot`),
# step 3's shortcut, then recomputes $P = e^{S - \ell}$ tile by tile: one kernel walks the queries for
# each key tile to make $dk$ and $dv$, another walks the keys for each query tile to make $dq$, so each
# gradient element is written by exactly one thread. Beside these CUDA-core kernels sit
# `attention_forward_mma` and `attention_backward_mma`, the same algorithm on the tensor cores (bf16
# matrix instructions; the backward makes dq in the same pass, adding each key tile's share with
# atomics), tested against them; on Hopper GPUs (H100, H200) `attention_hopper.cu` runs it again with
# warpgroup instructions that read the tiles from shared memory directly, tested against those. Its
# backward gives each of its three warpgroups a job: two hold 64 keys' $dk$ and $dv$ each and walk the
# query tiles, the third has the copy engine copy the next query tiles in (tensor copies, one thread
# issuing them), turns each tile's $dS$ into $dq$ and has the copy engine add it (one bulk addition per
# tile), so neither the copies nor the additions hold up the products. All compile here; `HS`, the
# head size, is a compile-time constant, 64 for GPT-2:

# %%
compile_kernels("attention", HS=64)

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    g = np.random.default_rng(1)
    qkv32 = g.normal(size=(4, 256, 3 * 768)).astype(np.float32)
    ref, lse_ref = np.empty((4, 256, 768), np.float32), np.empty((4, 12, 256), np.float32)
    attention_forward(ref, lse_ref, qkv32)
    out_gpu, lse_gpu = cp.empty(ref.shape, cp.float32), cp.empty(lse_ref.shape, cp.float32)
    cuda.attention_forward(out_gpu, lse_gpu, cp.asarray(qkv32))
    print(f"max |GPU - NumPy|: out {float(abs(out_gpu.get() - ref).max()):.1e}, lse {float(abs(lse_gpu.get() - lse_ref).max()):.1e}")

# %% [markdown]
# Next: [05 gelu](05_gelu.ipynb), the MLP's nonlinearity.
