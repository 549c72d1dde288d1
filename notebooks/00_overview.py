# %% [markdown]
# # 00 · GPT-2 at a glance
#
# These notebooks take GPT-2 apart one layer at a time. Every layer in `llmnp` is a pair of plain
# functions: a **forward** that computes the layer's output, and a **backward** that computes
# gradients, derived and written by hand. There is no autograd anywhere: the backward functions *are*
# the product, and each notebook derives one of them on paper, checks it numerically and then checks
# `llmnp`'s version against it.
#
# This first notebook shows the whole model at once: the layers, the shape of every tensor, and the one
# flat buffer all the parameters live in.
#
# **Reading order.** 00 overview → [01 encoder](01_encoder.ipynb) → [02 layernorm](02_layernorm.ipynb)
# → [03 matmul](03_matmul.ipynb) → [04 attention](04_attention.ipynb) → [05 gelu](05_gelu.ipynb) →
# [06 residual](06_residual.ipynb) → [07 classifier](07_classifier.ipynb) → [08 adamw](08_adamw.ipynb)
# → [09 training](09_training.ipynb) → [10 cuda](10_cuda.ipynb) →
# [11 data parallel](11_data_parallel.ipynb) → [12 capstone](12_capstone.ipynb), the whole model
# assembled from the layers and checked against `GPT2`. Each runs top to bottom in seconds on a laptop
# CPU, 09 in about a minute.
#
# **Size letters**, the same everywhere in the code (they are llm.c's):
#
# | letter | meaning | GPT-2 small ("d12") |
# |---|---|---|
# | B | batch: sequences processed side by side | 4 to 64 |
# | T | time: tokens per sequence | 1024 |
# | C | channels: the length of each token's vector | 768 |
# | L | layers (transformer blocks) | 12 |
# | NH | attention heads | 12 |
# | hs | head size, C / NH | 64 |
# | V | vocabulary: distinct tokens | 50257 |
# | Vp | padded vocabulary: V rounded up to a multiple of 128 | 50304 |
# | maxT | positions the model has embeddings for | 1024 |

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.params import activation_specs, allocate, num_elements, parameter_specs

d12 = GPT2Config.preset("d12")                 # GPT-2 small, 124M parameters
tiny = GPT2Config.tiny(vocab_size=50)          # the same model in miniature: V = 50 padded to Vp = 64
print(d12)
print(tiny)


# %% [markdown]
# ## The forward pass, line by line
#
# Tokens are integer ids (the tokenizer turns text into them). The model reads `inputs` (B, T) and at
# every position predicts the next token; `targets` is the same text shifted by one.
#
# ```
# x      = wte[inputs] + wpe[:T]               (B,T,C)    01 encoder
# repeat L times (one transformer block, its own weights each time):
#     h   = layernorm(x; ln1w, ln1b)           (B,T,C)    02 layernorm
#     qkv = h @ qkvw^T + qkvb                  (B,T,3C)   03 matmul
#     a   = attention(qkv)                     (B,T,C)    04 attention
#     x   = x + (a @ attprojw^T + attprojb)    (B,T,C)    03 matmul, 06 residual
#     h   = layernorm(x; ln2w, ln2b)           (B,T,C)
#     f   = gelu(h @ fcw^T + fcb)              (B,T,4C)   05 gelu
#     x   = x + (f @ fcprojw^T + fcprojb)      (B,T,C)
# logits = layernorm(x; lnfw, lnfb) @ wte^T    (B,T,Vp)   the same wte as the encoder ("tied")
# loss   = mean over (b,t) of -log softmax(logits[b,t,:V])[targets[b,t]]   07 classifier
# ```
#
# The indented lines are one *transformer block*. Further down ("One transformer block, written out")
# they become code with `llmnp`'s layer functions, checked against the model, and `GPT2.forward` in
# [llmnp/model.py](../llmnp/model.py) is set against them.
# `x` is called the *residual stream*: each block reads it through a layernorm and adds its result
# back. Weights are stored (out, in), as PyTorch's `nn.Linear` and llm.c store them, so a linear layer
# is `x @ W^T`.
#
# ## The parameters: one table
#
# `parameter_specs(config)` is the ordered list of GPT-2's 16 parameter tensors, in llm.c's order.
# The L blocks' weights are stacked: `qkvw` is (L, 3C, C), one (3C, C) matrix per layer.

# %%
def show_table(specs):
    """name, shape, element count and offset of each entry of a (name, shape) table."""
    offset = 0
    print(f"{'name':>10} {'shape':>20} {'elements':>13} {'offset':>13}")
    for name, shape in specs:
        n = int(np.prod(shape))
        print(f"{name:>10} {str(shape):>20} {n:>13,} {offset:>13,}")
        offset += n
    print(f"{'total':>10} {'':>20} {offset:>13,}")


show_table(parameter_specs(d12))

# %% [markdown]
# 124,475,904 is the count llm.c prints for GPT-2 small. It can be counted by hand: each block has four
# matrices, $3C^2 + C^2 + 4C^2 + 4C^2 = 12C^2$ weights, plus $3C + C + 4C + C = 9C$ biases and
# $4C$ layernorm parameters. On top come the two embedding tables and the final layernorm:

# %%
C, L, Vp, maxT = d12.channels, d12.num_layers, d12.padded_vocab_size, d12.max_seq_len
by_hand = L * (12 * C * C + 13 * C) + Vp * C + maxT * C + 2 * C
print(f"{by_hand:,}", by_hand == num_elements(parameter_specs(d12)))
print(f"wte alone is {Vp * C / by_hand:.0%} of the model")

# %% [markdown]
# ## One flat buffer, sixteen views
#
# All parameters live in **one** contiguous 1-D array. `params["qkvw"]` is a *view*: a window into
# that array with a shape, not a copy. The gradients, AdamW's two moment buffers and the checkpoint
# file are laid out by the same table, so one offset means the same parameter in all of them: the
# optimizer runs over four long arrays, and a checkpoint is one write.

# %%
flat, params = allocate(parameter_specs(tiny))     # zeros, and {name: view}
print(flat.shape, flat.dtype, "|", len(params), "views")

params["qkvw"][1, 0, 0] = 7.0                      # write through a view ...
print("nonzero at flat offset", np.flatnonzero(flat))

# ... which is where the table puts it: the start of qkvw, plus one layer of (3C, C)
offset = sum(int(np.prod(s)) for n, s in parameter_specs(tiny)[:4])   # wte, wpe, ln1w, ln1b
print("expected", offset + 3 * tiny.channels * tiny.channels)
print("the view shares memory with the buffer:", np.shares_memory(flat, params["qkvw"]))

# %% [markdown]
# A `GPT2` model holds the same thing: `model.params_memory` is the flat buffer and `model.params` its
# views; `model.grads_memory` and `model.grads` are the gradients, in the same layout.
#
# Training needs four numbers per parameter: its value, its gradient, and AdamW's two running averages
# (notebook 08). In float32 that is 16 bytes per parameter:

# %%
N = num_elements(parameter_specs(d12))
for what, copies in [("parameters", 1), ("+ gradients", 2), ("+ AdamW m and v", 4)]:
    print(f"{what:>18}: {copies * N * 4 / 2**30:5.2f} GiB")

# %% [markdown]
# ## Activations: what the forward pass keeps for the backward pass
#
# Backward needs some of forward's intermediate results (a layer's input, usually), so forward saves
# them. `activation_specs(config, B, T)` is that list, allocated once as one buffer, like the
# parameters. And like the parameters, what the blocks keep is stacked over them, with a leading L:
# `ln1` is (L, B, T, C), one (B, T, C) layernorm output per block, and `ln1_mean` (L, B, T). The
# entries without it (`encoded`, the final `lnf`, the logits, the losses) occur once per forward pass.
# Below, for the tiny model (L = 2, NH = 2, C = 8) at B = 3, T = 5, `ln1` reads (2, 3, 5, 8).

# %%
show_table(activation_specs(tiny, B=3, T=5))

# %% [markdown]
# For GPT-2 small at B = 4, T = 1024, the picture shows where that memory goes. The largest is the
# logits over the whole vocabulary, a row of Vp per position (no probabilities are kept beside them:
# notebook 07; training holds at most 8,192 rows of them at once, `model.forward_backward`), then
# the MLP's 4C-wide activations of all 12 layers. Attention keeps only `att_lse`, T numbers per head
# (too small to see): notebook 04 shows how it avoids saving the (T, T) attention matrix.

# %%
specs = activation_specs(d12, B=4, T=1024)
names = [name for name, _ in specs]
mib = [np.prod(shape) * 4 / 2**20 for _, shape in specs]

fig, ax = plt.subplots(figsize=(7, 5))
ax.barh(names[::-1], mib[::-1])
ax.set_xlabel("MiB (float32)")
ax.set_title(f"GPT-2 small activations at B=4, T=1024: {sum(mib) / 1024:.1f} GiB in all")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Running it
#
# A fresh model guesses: its next-token probabilities are close to uniform over the V tokens, so its
# loss is close to $-\log(1/V) = \ln V$.

# %%
model = GPT2(tiny, seed=0)
rng = np.random.default_rng(0)
B, T = 2, 8
tokens = rng.integers(0, tiny.vocab_size, size=(B, T + 1))
inputs, targets = tokens[:, :-1], tokens[:, 1:]          # predict the next token at every position

loss = model.forward(inputs, targets)
print(f"loss {float(loss):.4f}   ln(V) = {np.log(tiny.vocab_size):.4f}")
print("logits", model.logits.shape)


# %% [markdown]
# ## One transformer block, written out
#
# The forward pass listed at the top, with `llmnp`'s NumPy layers, one call per line. Each layer
# writes into arrays its caller allocates (outputs first, then inputs, then weights: llm.c's
# convention), so a buffer is made before the call that fills it. `p["qkvw"][l]` is layer l's (3C, C)
# slice of the stacked weights.

# %%
from llmnp.attention import attention_forward
from llmnp.classifier import crossentropy_forward
from llmnp.encoder import encoder_forward
from llmnp.gelu import gelu_forward
from llmnp.layernorm import layernorm_forward
from llmnp.matmul import matmul_forward
from llmnp.residual import residual_forward


def block_forward(x, p, l, NH):
    """Transformer block l, plain: the residual stream x (B,T,C) in, the new residual stream out."""
    B, T, C = x.shape

    def new(*shape):
        return np.empty((B, T) + shape, dtype=x.dtype)

    h, mean, rstd = new(C), new(), new()
    layernorm_forward(h, mean, rstd, x, p["ln1w"][l], p["ln1b"][l])      # h = layernorm(x; ln1)
    qkv = new(3 * C)
    matmul_forward(qkv, h, p["qkvw"][l], p["qkvb"][l])                  # qkv = h @ qkvw^T + qkvb
    a, lse = new(C), np.empty((B, NH, T), dtype=x.dtype)
    attention_forward(a, lse, qkv)                                       # a = attention(qkv)
    proj = new(C)
    matmul_forward(proj, a, p["attprojw"][l], p["attprojb"][l])          # proj = a @ attprojw^T + attprojb
    x2 = new(C)
    residual_forward(x2, x, proj)                                        # x2 = x + proj
    layernorm_forward(h, mean, rstd, x2, p["ln2w"][l], p["ln2b"][l])     # h = layernorm(x2; ln2)
    f = new(4 * C)
    matmul_forward(f, h, p["fcw"][l], p["fcb"][l])                      # f = h @ fcw^T + fcb
    g = new(4 * C)
    gelu_forward(g, f)                                                   # g = gelu(f)
    matmul_forward(proj, g, p["fcprojw"][l], p["fcprojb"][l])            # proj = g @ fcprojw^T + fcprojb
    x3 = new(C)
    residual_forward(x3, x2, proj)                                       # x3 = x2 + proj
    return x3


def gpt2_forward(p, config, inputs, targets):
    """The whole forward pass, plain: logits (B,T,Vp) and the mean loss."""
    B, T = inputs.shape
    C = config.channels
    x = np.empty((B, T, C), dtype=p["wte"].dtype)
    encoder_forward(x, inputs, p["wte"], p["wpe"])                       # x = wte[inputs] + wpe[:T]
    for l in range(config.num_layers):
        x = block_forward(x, p, l, config.num_heads)
    h, mean, rstd = np.empty_like(x), np.empty((B, T), x.dtype), np.empty((B, T), x.dtype)
    layernorm_forward(h, mean, rstd, x, p["lnfw"], p["lnfb"])            # h = layernorm(x; lnf)
    logits = np.empty((B, T, config.padded_vocab_size), dtype=x.dtype)
    matmul_forward(logits, h, p["wte"], None)                            # logits = h @ wte^T
    losses, lse = np.empty((B, T), x.dtype), np.empty((B, T), x.dtype)
    crossentropy_forward(losses, lse, logits, targets, config.vocab_size)
    return logits, losses.mean()


logits, plain_loss = gpt2_forward(model.params, tiny, inputs, targets)
print(f"plain: loss {plain_loss:.6f}   GPT2.forward: loss {float(loss):.6f}")
print("largest difference in the logits:", np.abs(logits - model.logits).max())
assert np.allclose(logits, model.logits, atol=1e-5) and abs(plain_loss - float(loss)) < 1e-5


# %% [markdown]
# ### The fused path, against the plain block
#
# `GPT2.forward` makes the same calls but for two merges. Each merge replaces several passes over a
# (B, T, C) or (B, T, 4C) tensor by one: on a GPU these elementwise and row-wise steps cost their
# memory traffic, not their arithmetic, so fewer passes are faster. Line by line, with the names the
# model keeps its activations under (`model.acts`, each with a leading L for the layer):
#
# | plain block above | `GPT2.forward`, block l |
# |---|---|
# | `h = layernorm(x; ln1)` | not here: the previous block's last call computed it (block 0: a `layernorm_forward` before the loop) into `ln1[l]` |
# | `qkv = h @ qkvw^T + qkvb`; `a = attention(qkv)` | the same two calls, into `qkv[l]` and `atty[l]` |
# | `proj = a @ attprojw^T + attprojb` | `matmul_forward(residual2[l], atty[l], attprojw, None)`: the product only, written straight into the residual buffer |
# | `x2 = x + proj`; `h = layernorm(x2; ln2)` | `residual_layernorm_forward`: adds `attprojb` and `x` in place, giving `residual2[l]`, then its layernorm into `ln2[l]` |
# | `f = h @ fcw^T + fcb`; `g = gelu(f)` | `matmul_gelu_forward(fch_gelu[l], fch[l], ln2[l], fcw, fcb)`: one call, `f` into `fch[l]` and `gelu(f)` into `fch_gelu[l]` |
# | `proj = g @ fcprojw^T + fcprojb`; `x3 = x2 + proj` | `matmul_forward(residual3[l], ...)` and `residual_layernorm_forward` with `fcprojb`, giving `residual3[l]` and the **next** layernorm: block l+1's `ln1`, or `lnf` after the last block |
#
# So the fused model keeps the plain block's tensors: `residual2[l]` is the plain `x2`, `residual3[l]`
# the plain `x3`, `fch[l]` the plain `f`. It never keeps the projections on their own
# (backward does not need them). On the CPU the two fused functions are the plain composition, the
# reference their GPU kernels are tested against:

# %%
import inspect

from llmnp.layernorm import residual_layernorm_forward
from llmnp.matmul import matmul_gelu_forward

print(inspect.getsource(residual_layernorm_forward))
print(inspect.getsource(matmul_gelu_forward))

# %% [markdown]
# In backward the merges cost nothing new: the residual add passes its gradient on unchanged (notebook
# 06), so the layernorm's backward adds straight into the residual stream's gradient. That gradient is
# also the dout of the projection that wrote the stream, whose bias gradient is the sum of its rows: the
# layernorm's backward adds those up as it leaves them (`dproj_bias`), so the projection's
# `matmul_backward` gets no `dbias` (and `attention_backward` likewise sums `dqkv` into the qkv bias
# gradient). fcproj's `matmul_backward` is given `fch[l]` as `pre_gelu` and takes its input gradient on
# through GELU's backward, so `dfch` comes out of one call.

# %% [markdown]
# ## A block's dataflow, both ways
#
# Forward runs down the left column, reading the residual stream `x` twice per block (through a
# layernorm, and on the skip path around the branch). Backward runs up the right column, with the
# same two roads: the residual add hands `dx` unchanged to the skip path and to the branch, and where
# the branch meets the stream again (at its layernorm), the two gradients add.

# %%
def draw_block(ax, x0, steps, color, direction, title):
    """One column of boxes joined by arrows, the residual adds as circles with their skip arcs."""
    ys = np.arange(len(steps))[::-1] * 1.0
    for y, (label, kind) in zip(ys, steps):
        if kind == "add":
            ax.add_patch(plt.Circle((x0, y), 0.22, fc="white", ec=color, lw=1.5))
            ax.text(x0, y, "+", ha="center", va="center", fontsize=12, color=color)
        else:
            ax.add_patch(plt.Rectangle((x0 - 0.9, y - 0.28), 1.8, 0.56, fc=color, alpha=0.15, ec=color))
            ax.text(x0, y, label, ha="center", va="center", fontsize=8)
    for a, b in zip(ys[:-1], ys[1:]):                     # arrows along the column
        start, end = (a - 0.3, b + 0.3) if direction == "down" else (b + 0.3, a - 0.3)
        ax.annotate("", (x0, end), (x0, start), arrowprops=dict(arrowstyle="->", color=color))
    adds = [y for y, (_, kind) in zip(ys, steps) if kind == "add"]
    for top, add in zip([ys[0], adds[0]], adds):           # the skip path around each branch
        start, end = ((x0 + 0.95, top), (x0 + 0.25, add)) if direction == "down" else ((x0 + 0.25, add), (x0 + 0.95, top))
        ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", color=color, ls="--",
                                                    connectionstyle="arc3,rad=-0.3" if direction == "down" else "arc3,rad=0.3"))
    ax.text(x0, ys[0] + 0.7, title, ha="center", fontsize=10, color=color, weight="bold")


forward_steps = [("x (residual stream)", ""), ("layernorm ln1  (02)", ""), ("qkv = h qkvw^T + b  (03)", ""),
                 ("attention  (04)", ""), ("attproj  (03)", ""), ("", "add"), ("layernorm ln2  (02)", ""),
                 ("fc  (03)", ""), ("gelu  (05)", ""), ("fcproj  (03)", ""), ("", "add")]
backward_steps = [("dx: += ln1's dinp", ""), ("layernorm_backward", ""), ("matmul_backward: dqkv", ""),
                  ("attention_backward", ""), ("matmul_backward: datty", ""), ("", "add"),
                  ("layernorm_backward (adds)", ""), ("matmul_backward: dln2", ""), ("gelu_backward", ""),
                  ("matmul_backward: dgelu", ""), ("", "add")]
fig, ax = plt.subplots(figsize=(9, 6.5))
draw_block(ax, 0, forward_steps, "tab:blue", "down", "forward")
draw_block(ax, 3.6, backward_steps, "tab:red", "up", "backward")
ax.text(3.6, -0.75, "dx from the block above", ha="center", fontsize=8, color="tab:red")
ax.text(0, -0.75, "x to the block above", ha="center", fontsize=8, color="tab:blue")
ax.set_xlim(-1.3, 5.2)
ax.set_ylim(-1.1, len(forward_steps) + 0.2)
ax.set_aspect("equal")
ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Backward: the chain rule, one layer at a time
#
# The loss $L$ is one number. For any tensor $u$ in the model, write $du$ for the tensor of the same
# shape holding $\partial L / \partial u_i$. A layer `out = f(inp, w)` gets `dout` from the layer above
# it and must produce `dinp` (to pass down) and `dw` (for the optimizer). By the chain rule,
# $$d\text{inp}_j = \sum_i d\text{out}_i \,\frac{\partial\, \text{out}_i}{\partial\, \text{inp}_j}$$
# The layer never needs to know what happens after it: `dout` sums it all up. So backward walks the
# list of the forward pass from the bottom up, each layer turning `dout` into `dinp`.
#
# Two rules, the same on CPU and GPU:
# - **parameter gradients accumulate** (`+=`) until `zero_grad()`: several small batches (micro-batches)
#   can add into one gradient before one optimizer step, and `wte`, used twice, gets both contributions;
# - **a tensor read in two places gets the sum of both gradients**: the residual stream `x` is read by a
#   block and also passed on past it, so its gradient accumulates too (notebook 06).

# %%
model.zero_grad()
model.backward()
for name, g in model.grads.items():
    print(f"{name:>9} {str(g.shape):>14}  |grad| = {np.linalg.norm(g):.5f}")


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


# %% [markdown]
# For the whole model, $f$ is simply the loss, and `x` one parameter tensor. The model runs in float64
# here so that the differences are not drowned in rounding:

# %%
model64 = GPT2(tiny, dtype=np.float64, seed=0)


def loss():
    return float(model64.forward(inputs, targets))


loss()
model64.zero_grad()
model64.backward()
checked = ("wte", "qkvw", "attprojb", "ln2w", "fcw", "lnfb")
worst = gradcheck_table(loss, {name: (model64.params[name], model64.grads[name].copy()) for name in checked})
print(f"worst error {worst:.1e}")
assert worst < 1e-7

# %% [markdown]
# Every parameter agrees to many digits, across all twelve layer functions chained together. The next
# notebooks open those functions one at a time, starting with the first: the [encoder](01_encoder.ipynb).
