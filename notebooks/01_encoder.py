# %% [markdown]
# # 01 · Encoder: token and position embeddings
#
# The first layer turns token ids into vectors. GPT-2 has two tables: `wte` (Vp, C), one row per token
# of the vocabulary, and `wpe` (maxT, C), one row per position. The vector for the token at position
# $t$ of sequence $b$ is its token's row plus its position's row:
# $$\text{out}_{b,t,:} \;=\; W^{te}_{\;\text{inp}_{b,t},\,:} \;+\; W^{pe}_{\;t,\,:}$$
# Looking up a row equals multiplying a one-hot vector by the table, without the multiplications.
# Both tables are learned: training moves tokens that behave alike to nearby rows.
#
# The code: [llmnp/encoder.py](../llmnp/encoder.py); on the GPU: [llmnp/cuda/encoder.cu](../llmnp/cuda/encoder.cu).

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp.encoder import encoder_backward, encoder_forward

rng = np.random.default_rng(0)
B, T, C, Vp, maxT = 2, 5, 4, 10, 8
inp = np.array([[3, 1, 4, 1, 5],
                [9, 2, 6, 5, 3]], dtype=np.int32)  # token ids (B,T): 1, 3 and 5 appear twice
wte = rng.normal(size=(Vp, C))                      # (Vp,C) token embeddings
wpe = rng.normal(size=(maxT, C))                    # (maxT,C) position embeddings


# %% [markdown]
# ## Forward, from scratch

# %%
def encoder_forward_scratch(inp, wte, wpe):
    T = inp.shape[1]
    return wte[inp] + wpe[:T]      # (B,T) ids -> (B,T,C) rows, plus (T,C) broadcast over the batch


out = encoder_forward_scratch(inp, wte, wpe)
print(out.shape)
print("out[1, 2] is row 6 of wte plus row 2 of wpe:", np.allclose(out[1, 2], wte[6] + wpe[2]))


# %% [markdown]
# ## Backward, step by step
#
# Backward receives `dout` $= \partial L / \partial\,\text{out}$, shape (B, T, C), and must produce
# $\partial L / \partial W^{te}$ and $\partial L / \partial W^{pe}$. The input `inp` holds integers,
# so it has no gradient.
#
# 1. **Which outputs does one parameter touch?** Take one entry $W^{te}_{v,c}$. It appears in
#    $\text{out}_{b,t,c}$ exactly where $\text{inp}_{b,t} = v$, added with coefficient 1, so
#    $\partial\,\text{out}_{b,t,c} / \partial W^{te}_{v,c} = 1$ there and 0 everywhere else.
# 2. **Chain rule: sum over those outputs.**
#    $$\frac{\partial L}{\partial W^{te}_{v,c}} = \sum_{b,t\,:\ \text{inp}_{b,t} = v} \text{dout}_{b,t,c}$$
#    A token that appears three times in the batch collects three contributions; a token that does not
#    appear gets zero.
# 3. **Same for positions.** $W^{pe}_{t,c}$ appears in $\text{out}_{b,t,c}$ for every sequence $b$:
#    $$\frac{\partial L}{\partial W^{pe}_{t,c}} = \sum_{b} \text{dout}_{b,t,c}$$
#
# %% [markdown]
# ### Exercise: write it yourself
#
# Fill in the body below from the three steps, then run the cell after it. `check_backward`
# ([llmnp/exercises.py](../llmnp/exercises.py)) feeds your function a random `dout`, compares every
# gradient it returns with finite differences of the forward (the check of the section below, element
# by element) and says which gradient is wrong and where. Left as it is, the body raises
# `NotImplementedError` and the checker takes the solution, [solutions/encoder.py](solutions/encoder.py),
# instead: the rest of the notebook uses whichever passed.
#
# A hint: in code, each position sends its `dout` row back to the two rows it read.

# %%
def encoder_backward_scratch(dout, inp, wte, wpe):
    """dwte (Vp,C) and dwpe (maxT,C), from dout (B,T,C). The tables are passed for their shapes."""
    raise NotImplementedError("your code here")


# %%
from llmnp.exercises import check_backward
from solutions import encoder as solution

encoder_backward_scratch = check_backward(encoder_forward_scratch, encoder_backward_scratch,
                                          dict(inp=inp, wte=wte, wpe=wpe), ("wte", "wpe"),
                                          solution=solution.encoder_backward_scratch)
dout = rng.normal(size=(B, T, C))
dwte, dwpe = encoder_backward_scratch(dout, inp, wte, wpe)

# %% [markdown]
# ### A trap: `+=` with repeated indices
#
# The loop is slow in Python. The obvious vectorized form, `dwte[inp] += dout`, is **wrong**: NumPy
# runs it as `dwte[inp] = dwte[inp] + dout`, and where an index repeats, the last write wins.
# `np.add.at` is the unbuffered version that really adds every contribution (the GPU has the same
# problem: many threads adding into one row).

# %%
wrong = np.zeros((Vp, C))
wrong[inp] += dout
right = np.zeros((Vp, C))
np.add.at(right, inp, dout)
print("token 1, fancy +=  :", wrong[1].round(4))
print("token 1, np.add.at :", right[1].round(4))
print("token 1, the loop  :", dwte[1].round(4))


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
    return float(np.sum(encoder_forward_scratch(inp, wte, wpe) * dout))


worst = gradcheck_table(loss, {"wte": (wte, dwte), "wpe": (wpe, dwpe)}, n=4)
assert worst < 1e-8

# %% [markdown]
# The encoder is linear in its tables, so the central difference is exact up to rounding. Zeros are
# rows that this batch never read: tokens absent from `inp`, positions at or beyond T.
#
# ## llmnp's encoder
#
# `llmnp`'s layers follow llm.c's conventions: they write into buffers the caller owns (outputs first,
# then inputs, then weights), and the backward **adds** into `dwte` and `dwpe` (`+=`). Accumulating is
# what lets several micro-batches add up into one gradient, and it lets `wte` collect its gradient from
# both places that use it: here, and the classifier at the top of the model (notebook 07).

# %%
out_llmnp = np.empty((B, T, C))
encoder_forward(out_llmnp, inp, wte, wpe)
print("forward matches the scratch version:", np.allclose(out_llmnp, out))

dwte_llmnp, dwpe_llmnp = np.zeros_like(wte), np.zeros_like(wpe)
encoder_backward(dwte_llmnp, dwpe_llmnp, dout, inp)
print("backward matches:", np.allclose(dwte_llmnp, dwte), np.allclose(dwpe_llmnp, dwpe))

encoder_backward(dwte_llmnp, dwpe_llmnp, dout, inp)        # a second call adds on top
print("and accumulates:", np.allclose(dwte_llmnp, 2 * dwte))

# %% [markdown]
# ## Which rows learn
#
# Only the rows of tokens in the batch get a gradient here, and a token's gradient is the sum over its
# occurrences. In GPT-2 small a batch of 4 × 1024 tokens touches a few thousand of the 50,304 rows of
# `wte`.

# %%
counts = np.bincount(inp.ravel(), minlength=Vp)
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(Vp), np.linalg.norm(dwte, axis=1))
ax.set_xticks(range(Vp), [f"{v}\n×{counts[v]}" for v in range(Vp)])
ax.set_xlabel("row of wte (token id) and how often the token occurs in the batch")
ax.set_ylabel("‖dwte[row]‖")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## On the GPU
#
# [llmnp/cuda/encoder.cu](../llmnp/cuda/encoder.cu) does the same work with thousands of GPU threads.
# A kernel is the body of a loop: the GPU runs it once per thread, each thread finding its element
# from its numbers in the grid (notebook 10 reads one kernel line by line). The way to read one is to
# write the loop it is the body of, in NumPy, with the same flat indices, and check that loop against
# the layer.
#
# **Forward: one thread per 16 bytes of output.** The (B, T, C) output is N·C numbers in a row (N = B·T
# positions). Memory moves fastest in 16-byte pieces, so each thread takes `PACK` consecutive numbers
# of one row (8 in bf16, 4 in float32; `PACK` in common.cuh): thread `idx` of the grid works out its
# position `n`, time `t` and first channel `c`, then reads its piece of the `wte` row and of the `wpe`
# row with one instruction each (`load_floats`, where the rows are 16-byte aligned; else number by
# number) and writes the sums with one more (`store_floats`):

# %%
def encoder_forward_threads(inp, wte, wpe, P=8):
    B, T = inp.shape
    N, C = B * T, wte.shape[1]
    chunks = -(-C // P)                                 # PACK-wide pieces per row (the last may be short)
    out = np.empty(N * C)                               # flat, as the GPU sees every buffer
    for idx in range(N * chunks):                       # the body: thread idx = blockIdx.x * blockDim.x + threadIdx.x
        n, c = idx // chunks, idx % chunks * P
        t = n % T
        for k in range(c, min(c + P, C)):               # its P numbers: one load and one store on the GPU
            out[n * C + k] = wte.ravel()[inp.ravel()[n] * C + k] + wpe.ravel()[t * C + k]
    return out.reshape(B, T, C)


print("the thread loop = the layer:", np.allclose(encoder_forward_threads(inp, wte, wpe), out))

# %% [markdown]
# **Backward, `dwte`: one block per run of equal tokens.** Threads handling different positions of one
# token would add into the same `dwte` row at the same moment. Atomic adds would work, in an order that
# changes from run to run; instead the launcher sorts the positions by token (`order`), and block `i`
# looks at the i-th position in that order: if it starts a run of equal tokens, it sums the whole run,
# its threads striding over the C channels a 16-byte piece at a time; if not, it exits at once. Every row is summed by one block,
# always in the same order, so the result is the same bit for bit on every run. In NumPy:

# %%
def encoder_backward_dwte_blocks(dout, inp, Vp, block_dim=2, P=8):
    N, C = inp.size, dout.shape[-1]
    inp, dout = inp.ravel(), dout.reshape(N, C)
    order = np.argsort(inp, kind="stable")             # the launcher's sort: positions grouped by token
    dwte = np.zeros((Vp, C))
    for i in range(N):                                  # blockIdx.x = i
        token = inp[order[i]]
        if i > 0 and inp[order[i - 1]] == token:
            continue                                    # not the start of a run: this block exits
        end = i + 1
        while end < N and inp[order[end]] == token:
            end += 1
        for thread in range(block_dim):                 # threadIdx.x, in parallel on the GPU
            for c0 in range(thread * P, C, block_dim * P):   # each thread strides over the channels, P at a time
                for c in range(c0, min(c0 + P, C)):
                    dwte[token, c] += sum(dout[order[j], c] for j in range(i, end))
    return dwte


print("the block loop = np.add.at:", np.allclose(encoder_backward_dwte_blocks(dout, inp, Vp), dwte))

# %% [markdown]
# The kernels, as they stand in the file: forward, then `dwte`'s backward (`dwpe`'s,
# `encoder_backward_dwpe`, is one thread per (t, c) summing over the batch):

# %%
from kernels import GPU, compile_kernels, show

show("encoder", "encoder_forward_kernel(", "store_floats(out")
print()
show("encoder", "encoder_backward_dwte(", "store_floats(row")

# %% [markdown]
# `toF` / `fromF` convert from and to the storage type (float32, or bf16: notebook 10), and the sums
# are kept in `float` whatever the storage. NVRTC, CUDA's compiler, builds the file on any machine
# that has it, GPU or not; the GPU cell after it runs the kernels against the NumPy layer, and without
# a GPU prints a note.

# %%
compile_kernels("encoder")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    g = np.random.default_rng(1)
    tokens = g.integers(0, 50, size=(8, 64)).astype(np.int32)
    wte32, wpe32 = g.normal(size=(64, 48)).astype(np.float32), g.normal(size=(64, 48)).astype(np.float32)
    dout32 = g.normal(size=(8, 64, 48)).astype(np.float32)
    ref, dwte_ref, dwpe_ref = np.empty((8, 64, 48), np.float32), np.zeros_like(wte32), np.zeros_like(wpe32)
    encoder_forward(ref, tokens, wte32, wpe32)
    encoder_backward(dwte_ref, dwpe_ref, dout32, tokens)
    out_gpu, dwte_gpu, dwpe_gpu = cp.empty(ref.shape, cp.float32), cp.zeros(wte32.shape, cp.float32), cp.zeros(wpe32.shape, cp.float32)
    cuda.encoder_forward(out_gpu, cp.asarray(tokens), cp.asarray(wte32), cp.asarray(wpe32))
    cuda.encoder_backward(dwte_gpu, dwpe_gpu, cp.asarray(dout32), cp.asarray(tokens))
    print(f"max |GPU - NumPy|: out {float(abs(out_gpu.get() - ref).max()):.1e}, "
          f"dwte {float(abs(dwte_gpu.get() - dwte_ref).max()):.1e}, dwpe {float(abs(dwpe_gpu.get() - dwpe_ref).max()):.1e}")
    again = cp.zeros(wte32.shape, cp.float32)
    cuda.encoder_backward(again, cp.zeros(wpe32.shape, cp.float32), cp.asarray(dout32), cp.asarray(tokens))
    print("dwte the same bit for bit on a second run:", bool((again == dwte_gpu).all()))

# %% [markdown]
# Next: [02 layernorm](02_layernorm.ipynb), the first layer inside a transformer block.
