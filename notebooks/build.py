"""Writes the teaching notebooks, notebooks/*.ipynb, from the cells in this file.

    python notebooks/build.py            # (re)write every notebook, outputs cleared
    python notebooks/build.py --check    # exit 1 if a committed .ipynb differs from what this writes

Each notebook is a list of md(...) and code(...) cells below, in reading order. The .ipynb files are
committed without outputs; tests/test_notebooks.py executes every one and runs --check, so edit the
cells here, run this, and commit both. GRADCHECK is the one cell the layer notebooks share.
Not here: anything the notebooks compute; every layer they check is imported from llmnp.
"""
import os
import sys

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return ("markdown", text.strip("\n"))


def code(text):
    return ("code", text.strip("\n"))


NOTEBOOKS = {}   # name -> [cell]; filled below, one section per notebook


# A finite-difference check, pasted into every notebook that derives a backward pass, so each
# notebook reads top to bottom on its own.
GRADCHECK = code(r'''
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
''')

GRADCHECK_INTRO = md(r'''
## Finite-difference check

A derivative is a slope, so it can be measured: nudge one input by a tiny $\varepsilon$ both ways and
$$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon}$$
with an error of order $\varepsilon^2$. That costs two forward passes per number, far too slow to
train with, and exactly right for checking a hand-written backward on a few entries. In float64 with
$\varepsilon = 10^{-6}$ the two should agree to about 9 digits.

A layer's output is a tensor, not a number. To get a number, take $L = \sum \text{out} \odot
\text{dout}$ for a fixed random `dout`: its gradient with respect to `out` is `dout` itself, so the
backward pass fed with that `dout` must produce exactly $\partial L / \partial \text{input}$.
''')


def build_notebook(name, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, (kind, text) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        cell.id = f"c{i:02d}"                  # fixed ids: the same cells give the same file
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv):
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, name + ".ipynb")
        text = build_notebook(name, cells)
        if check:
            if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
                stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if check:
        stale += [os.path.join(HERE, f) for f in sorted(os.listdir(HERE))
                  if f.endswith(".ipynb") and f[:-len(".ipynb")] not in NOTEBOOKS]
    if stale:
        print("out of date with notebooks/build.py (run it; delete notebooks it does not write): " + " ".join(stale))
        return 1
    return 0


# ============================================================================ the notebooks


# ---------------------------------------------------------------------------------- 00 overview
NOTEBOOKS["00_overview"] = [
md(r'''
# 00 · GPT-2 at a glance

These notebooks take GPT-2 apart one layer at a time. Every layer in `llmnp` is a pair of plain
functions: a **forward** that computes the layer's output, and a **backward** that computes
gradients, derived and written by hand. There is no autograd anywhere: the backward functions *are*
the product, and each notebook derives one of them on paper, checks it numerically and then checks
`llmnp`'s version against it.

This first notebook shows the whole model at once: the layers, the shape of every tensor, and the one
flat buffer all the parameters live in.

**Reading order.** 00 overview → [01 encoder](01_encoder.ipynb) → [02 layernorm](02_layernorm.ipynb)
→ [03 matmul](03_matmul.ipynb) → [04 attention](04_attention.ipynb) → [05 gelu](05_gelu.ipynb) →
[06 residual](06_residual.ipynb) → [07 classifier](07_classifier.ipynb) → [08 adamw](08_adamw.ipynb)
→ [09 training](09_training.ipynb) → [10 cuda](10_cuda.ipynb) →
[11 data parallel](11_data_parallel.ipynb). Each runs top to bottom in seconds on a laptop CPU.

**Size letters**, the same everywhere in the code (they are llm.c's):

| letter | meaning | GPT-2 small ("d12") |
|---|---|---|
| B | batch: sequences processed side by side | 4 to 64 |
| T | time: tokens per sequence | 1024 |
| C | channels: the length of each token's vector | 768 |
| L | layers (transformer blocks) | 12 |
| NH | attention heads | 12 |
| hs | head size, C / NH | 64 |
| V | vocabulary: distinct tokens | 50257 |
| Vp | padded vocabulary: V rounded up to a multiple of 128 | 50304 |
| maxT | positions the model has embeddings for | 1024 |
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.params import activation_specs, allocate, num_elements, parameter_specs

d12 = GPT2Config.preset("d12")                 # GPT-2 small, 124M parameters
tiny = GPT2Config.tiny(vocab_size=50)          # the same model in miniature: V = 50 padded to Vp = 64
print(d12)
print(tiny)
'''),
md(r'''
## The forward pass, line by line

Tokens are integer ids (the tokenizer turns text into them). The model reads `inputs` (B, T) and at
every position predicts the next token; `targets` is the same text shifted by one.

```
x      = wte[inputs] + wpe[:T]               (B,T,C)    01 encoder
repeat L times (one transformer block, its own weights each time):
    h   = layernorm(x; ln1w, ln1b)           (B,T,C)    02 layernorm
    qkv = h @ qkvw^T + qkvb                  (B,T,3C)   03 matmul
    a   = attention(qkv)                     (B,T,C)    04 attention
    x   = x + (a @ attprojw^T + attprojb)    (B,T,C)    03 matmul, 06 residual
    h   = layernorm(x; ln2w, ln2b)           (B,T,C)
    f   = gelu(h @ fcw^T + fcb)              (B,T,4C)   05 gelu
    x   = x + (f @ fcprojw^T + fcprojb)      (B,T,C)
logits = layernorm(x; lnfw, lnfb) @ wte^T    (B,T,Vp)   the same wte as the encoder ("tied")
loss   = mean over (b,t) of -log softmax(logits[b,t,:V])[targets[b,t]]   07 classifier
```

`GPT2.forward` in [llmnp/model.py](../llmnp/model.py) is this list, one function call per line, but
for two merges that save the GPU passes over memory: each residual add and the layernorm after it are
one call (`residual_layernorm_forward`, which also adds the projection's bias), and the fc bias is
added by the GELU call (`bias_gelu_forward`).
`x` is called the *residual stream*: each block reads it through a layernorm and adds its result
back. Weights are stored (out, in), as PyTorch's `nn.Linear` and llm.c store them, so a linear layer
is `x @ W^T`.

## The parameters: one table

`parameter_specs(config)` is the ordered list of GPT-2's 16 parameter tensors, in llm.c's order.
The L blocks' weights are stacked: `qkvw` is (L, 3C, C), one (3C, C) matrix per layer.
'''),
code(r'''
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
'''),
md(r'''
124,475,904 is the count llm.c prints for GPT-2 small. It can be counted by hand: each block has four
matrices, $3C^2 + C^2 + 4C^2 + 4C^2 = 12C^2$ weights, plus $3C + C + 4C + C = 9C$ biases and
$4C$ layernorm parameters. On top come the two embedding tables and the final layernorm:
'''),
code(r'''
C, L, Vp, maxT = d12.channels, d12.num_layers, d12.padded_vocab_size, d12.max_seq_len
by_hand = L * (12 * C * C + 13 * C) + Vp * C + maxT * C + 2 * C
print(f"{by_hand:,}", by_hand == num_elements(parameter_specs(d12)))
print(f"wte alone is {Vp * C / by_hand:.0%} of the model")
'''),
md(r'''
## One flat buffer, sixteen views

All parameters live in **one** contiguous 1-D array. `params["qkvw"]` is a *view*: a window into
that array with a shape, not a copy. The gradients, AdamW's two moment buffers and the checkpoint
file are laid out by the same table, so one offset means the same parameter in all of them: the
optimizer runs over four long arrays, and a checkpoint is one write.
'''),
code(r'''
flat, params = allocate(parameter_specs(tiny))     # zeros, and {name: view}
print(flat.shape, flat.dtype, "|", len(params), "views")

params["qkvw"][1, 0, 0] = 7.0                      # write through a view ...
print("nonzero at flat offset", np.flatnonzero(flat))

# ... which is where the table puts it: the start of qkvw, plus one layer of (3C, C)
offset = sum(int(np.prod(s)) for n, s in parameter_specs(tiny)[:4])   # wte, wpe, ln1w, ln1b
print("expected", offset + 3 * tiny.channels * tiny.channels)
print("the view shares memory with the buffer:", np.shares_memory(flat, params["qkvw"]))
'''),
md(r'''
A `GPT2` model holds the same thing: `model.params_memory` is the flat buffer and `model.params` its
views; `model.grads_memory` and `model.grads` are the gradients, in the same layout.

Training needs four numbers per parameter: its value, its gradient, and AdamW's two running averages
(notebook 08). In float32 that is 16 bytes per parameter:
'''),
code(r'''
N = num_elements(parameter_specs(d12))
for what, copies in [("parameters", 1), ("+ gradients", 2), ("+ AdamW m and v", 4)]:
    print(f"{what:>18}: {copies * N * 4 / 2**30:5.2f} GiB")
'''),
md(r'''
## Activations: what the forward pass keeps for the backward pass

Backward needs some of forward's intermediate results (a layer's input, usually), so forward saves
them. `activation_specs(config, B, T)` is that list, allocated once as one buffer, like the
parameters.
'''),
code(r'''
show_table(activation_specs(tiny, B=2, T=8))
'''),
md(r'''
For GPT-2 small at B = 4, T = 1024, the picture shows where that memory goes. The largest is the
(B, T, Vp) logits over the whole vocabulary (no probabilities are kept beside them: notebook 07), then
the MLP's 4C-wide activations of all 12 layers. Attention keeps only `att_lse`, T numbers per head
(too small to see): notebook 04 shows how it avoids saving the (T, T) attention matrix.
'''),
code(r'''
specs = activation_specs(d12, B=4, T=1024)
names = [name for name, _ in specs]
mib = [np.prod(shape) * 4 / 2**20 for _, shape in specs]

fig, ax = plt.subplots(figsize=(7, 5))
ax.barh(names[::-1], mib[::-1])
ax.set_xlabel("MiB (float32)")
ax.set_title(f"GPT-2 small activations at B=4, T=1024: {sum(mib) / 1024:.1f} GiB in all")
plt.tight_layout()
plt.show()
'''),
md(r'''
## Running it

A fresh model guesses: its next-token probabilities are close to uniform over the V tokens, so its
loss is close to $-\log(1/V) = \ln V$.
'''),
code(r'''
model = GPT2(tiny, seed=0)
rng = np.random.default_rng(0)
B, T = 2, 8
tokens = rng.integers(0, tiny.vocab_size, size=(B, T + 1))
inputs, targets = tokens[:, :-1], tokens[:, 1:]          # predict the next token at every position

loss = model.forward(inputs, targets)
print(f"loss {float(loss):.4f}   ln(V) = {np.log(tiny.vocab_size):.4f}")
print("logits", model.logits.shape)
'''),
md(r'''
## Backward: the chain rule, one layer at a time

The loss $L$ is one number. For any tensor $u$ in the model, write $du$ for the tensor of the same
shape holding $\partial L / \partial u_i$. A layer `out = f(inp, w)` gets `dout` from the layer above
it and must produce `dinp` (to pass down) and `dw` (for the optimizer). By the chain rule,
$$d\text{inp}_j = \sum_i d\text{out}_i \,\frac{\partial\, \text{out}_i}{\partial\, \text{inp}_j}$$
The layer never needs to know what happens after it: `dout` sums it all up. So backward walks the
list of the forward pass from the bottom up, each layer turning `dout` into `dinp`.

Two rules, the same on CPU and GPU:
- **parameter gradients accumulate** (`+=`) until `zero_grad()`: several small batches (micro-batches)
  can add into one gradient before one optimizer step, and `wte`, used twice, gets both contributions;
- **a tensor read in two places gets the sum of both gradients**: the residual stream `x` is read by a
  block and also passed on past it, so its gradient accumulates too (notebook 06).
'''),
code(r'''
model.zero_grad()
model.backward()
for name, g in model.grads.items():
    print(f"{name:>9} {str(g.shape):>14}  |grad| = {np.linalg.norm(g):.5f}")
'''),
GRADCHECK_INTRO,
GRADCHECK,
md(r'''
For the whole model, $f$ is simply the loss, and `x` one parameter tensor. The model runs in float64
here so that the differences are not drowned in rounding:
'''),
code(r'''
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
'''),
md(r'''
Every parameter agrees to many digits, across all twelve layer functions chained together. The next
notebooks open those functions one at a time, starting with the first: the [encoder](01_encoder.ipynb).
'''),
]


# ----------------------------------------------------------------------------------- 01 encoder
NOTEBOOKS["01_encoder"] = [
md(r'''
# 01 · Encoder: token and position embeddings

The first layer turns token ids into vectors. GPT-2 has two tables: `wte` (Vp, C), one row per token
of the vocabulary, and `wpe` (maxT, C), one row per position. The vector for the token at position
$t$ of sequence $b$ is its token's row plus its position's row:
$$\text{out}_{b,t,:} \;=\; W^{te}_{\;\text{inp}_{b,t},\,:} \;+\; W^{pe}_{\;t,\,:}$$
Looking up a row equals multiplying a one-hot vector by the table, without the multiplications.
Both tables are learned: training moves tokens that behave alike to nearby rows.

The code: [llmnp/encoder.py](../llmnp/encoder.py); on the GPU: [llmnp/cuda/encoder.cu](../llmnp/cuda/encoder.cu).
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp.encoder import encoder_backward, encoder_forward

rng = np.random.default_rng(0)
B, T, C, Vp, maxT = 2, 5, 4, 10, 8
inp = np.array([[3, 1, 4, 1, 5],
                [9, 2, 6, 5, 3]], dtype=np.int32)  # token ids (B,T): 1, 3 and 5 appear twice
wte = rng.normal(size=(Vp, C))                      # (Vp,C) token embeddings
wpe = rng.normal(size=(maxT, C))                    # (maxT,C) position embeddings
'''),
md(r'''
## Forward, from scratch
'''),
code(r'''
def encoder_forward_scratch(inp, wte, wpe):
    T = inp.shape[1]
    return wte[inp] + wpe[:T]      # (B,T) ids -> (B,T,C) rows, plus (T,C) broadcast over the batch


out = encoder_forward_scratch(inp, wte, wpe)
print(out.shape)
print("out[1, 2] is row 6 of wte plus row 2 of wpe:", np.allclose(out[1, 2], wte[6] + wpe[2]))
'''),
md(r'''
## Backward, step by step

Backward receives `dout` $= \partial L / \partial\,\text{out}$, shape (B, T, C), and must produce
$\partial L / \partial W^{te}$ and $\partial L / \partial W^{pe}$. The input `inp` holds integers,
so it has no gradient.

1. **Which outputs does one parameter touch?** Take one entry $W^{te}_{v,c}$. It appears in
   $\text{out}_{b,t,c}$ exactly where $\text{inp}_{b,t} = v$, added with coefficient 1, so
   $\partial\,\text{out}_{b,t,c} / \partial W^{te}_{v,c} = 1$ there and 0 everywhere else.
2. **Chain rule: sum over those outputs.**
   $$\frac{\partial L}{\partial W^{te}_{v,c}} = \sum_{b,t\,:\ \text{inp}_{b,t} = v} \text{dout}_{b,t,c}$$
   A token that appears three times in the batch collects three contributions; a token that does not
   appear gets zero.
3. **Same for positions.** $W^{pe}_{t,c}$ appears in $\text{out}_{b,t,c}$ for every sequence $b$:
   $$\frac{\partial L}{\partial W^{pe}_{t,c}} = \sum_{b} \text{dout}_{b,t,c}$$

In code, each position sends its `dout` row back to the two rows it read:
'''),
code(r'''
def encoder_backward_scratch(dout, inp, Vp, maxT):
    B, T, C = dout.shape
    dwte, dwpe = np.zeros((Vp, C)), np.zeros((maxT, C))
    for b in range(B):
        for t in range(T):
            dwte[inp[b, t]] += dout[b, t]     # the token row this position read
            dwpe[t] += dout[b, t]             # the position row it read
    return dwte, dwpe


dout = rng.normal(size=(B, T, C))
dwte, dwpe = encoder_backward_scratch(dout, inp, Vp, maxT)
'''),
md(r'''
### A trap: `+=` with repeated indices

The loop is slow in Python. The obvious vectorized form, `dwte[inp] += dout`, is **wrong**: NumPy
runs it as `dwte[inp] = dwte[inp] + dout`, and where an index repeats, the last write wins.
`np.add.at` is the unbuffered version that really adds every contribution (the GPU has the same
problem: many threads adding into one row).
'''),
code(r'''
wrong = np.zeros((Vp, C))
wrong[inp] += dout
right = np.zeros((Vp, C))
np.add.at(right, inp, dout)
print("token 1, fancy +=  :", wrong[1].round(4))
print("token 1, np.add.at :", right[1].round(4))
print("token 1, the loop  :", dwte[1].round(4))
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
def loss():
    return float(np.sum(encoder_forward_scratch(inp, wte, wpe) * dout))


worst = gradcheck_table(loss, {"wte": (wte, dwte), "wpe": (wpe, dwpe)}, n=4)
assert worst < 1e-8
'''),
md(r'''
The encoder is linear in its tables, so the central difference is exact up to rounding. Zeros are
rows that this batch never read: tokens absent from `inp`, positions at or beyond T.

## llmnp's encoder

`llmnp`'s layers follow llm.c's conventions: they write into buffers the caller owns (outputs first,
then inputs, then weights), and the backward **adds** into `dwte` and `dwpe` (`+=`). Accumulating is
what lets several micro-batches add up into one gradient, and it lets `wte` collect its gradient from
both places that use it: here, and the classifier at the top of the model (notebook 07).
'''),
code(r'''
out_llmnp = np.empty((B, T, C))
encoder_forward(out_llmnp, inp, wte, wpe)
print("forward matches the scratch version:", np.allclose(out_llmnp, out))

dwte_llmnp, dwpe_llmnp = np.zeros_like(wte), np.zeros_like(wpe)
encoder_backward(dwte_llmnp, dwpe_llmnp, dout, inp)
print("backward matches:", np.allclose(dwte_llmnp, dwte), np.allclose(dwpe_llmnp, dwpe))

encoder_backward(dwte_llmnp, dwpe_llmnp, dout, inp)        # a second call adds on top
print("and accumulates:", np.allclose(dwte_llmnp, 2 * dwte))
'''),
md(r'''
## Which rows learn

Only the rows of tokens in the batch get a gradient here, and a token's gradient is the sum over its
occurrences. In GPT-2 small a batch of 4 × 1024 tokens touches a few thousand of the 50,304 rows of
`wte`.
'''),
code(r'''
counts = np.bincount(inp.ravel(), minlength=Vp)
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(Vp), np.linalg.norm(dwte, axis=1))
ax.set_xticks(range(Vp), [f"{v}\n×{counts[v]}" for v in range(Vp)])
ax.set_xlabel("row of wte (token id) and how often the token occurs in the batch")
ax.set_ylabel("‖dwte[row]‖")
plt.tight_layout()
plt.show()
'''),
md(r'''
## On the GPU

[llmnp/cuda/encoder.cu](../llmnp/cuda/encoder.cu) does the same work with thousands of GPU threads.
The forward is a pure lookup. The backward is where repeated tokens bite again: threads handling
different positions of one token would add into the same `dwte` row at the same moment. Atomic adds
would work, in an order that changes from run to run; `encoder.cu` instead has the launcher sort the
positions by token, so that each token's positions are summed by one group of threads, in a fixed
order. Notebook 10 reads a kernel line by line.

Next: [02 layernorm](02_layernorm.ipynb), the first layer inside a transformer block.
'''),
]


# --------------------------------------------------------------------------------- 02 layernorm
NOTEBOOKS["02_layernorm"] = [
md(r'''
# 02 · LayerNorm

Every block reads the residual stream through a layernorm, and one more sits before the classifier.
It rescales each token's vector of C numbers to mean 0 and variance 1, then applies a learned scale
$w$ and shift $b$ per channel. Whatever the scale the residual stream grows to, the layer after it
sees inputs of a fixed size.

For one position (one row of C numbers $x_1 \dots x_C$):
$$\mu = \frac{1}{C}\sum_{i} x_i, \qquad
\sigma^2 = \frac{1}{C}\sum_{i} (x_i - \mu)^2, \qquad
r = \frac{1}{\sqrt{\sigma^2 + \epsilon}}$$
$$\hat{x}_i = (x_i - \mu)\, r, \qquad y_i = w_i\, \hat{x}_i + b_i$$
with $\epsilon = 10^{-5}$ and the biased variance (divide by C, not C−1), as PyTorch and llm.c.
$r$ is the *reciprocal standard deviation*, `rstd` in the code. Forward saves $\mu$ and $r$ for
each position, (B, T) each, so backward does not recompute them.

The code: [llmnp/layernorm.py](../llmnp/layernorm.py); on the GPU: [llmnp/cuda/layernorm.cu](../llmnp/cuda/layernorm.cu).
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp.layernorm import layernorm_backward, layernorm_forward

rng = np.random.default_rng(0)
B, T, C = 2, 3, 8
x = 3 * rng.normal(size=(B, T, C)) + 1       # (B,T,C) an input with some offset and scale
w = 1 + 0.1 * rng.normal(size=C)              # (C,)
b = 0.1 * rng.normal(size=C)                  # (C,)
'''),
md(r'''
## Forward, from scratch
'''),
code(r'''
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
'''),
md(r'''
### What it does to the statistics

Below, 300 rows of C = 64 numbers, each with its own offset and scale, as rows of a residual stream
have. Before: every row has a different mean and standard deviation. After layernorm (with $w = 1$,
$b = 0$): all rows sit at mean 0 and standard deviation 1. The learned $w$ and $b$ then choose the
scale and offset per channel.
'''),
code(r'''
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
'''),
md(r'''
## Backward, step by step

Backward gets `dout` $= \partial L/\partial y$ (B, T, C) and must produce $\partial L/\partial x$,
$\partial L/\partial w$, $\partial L/\partial b$. Write $dz$ for $\partial L/\partial z$. Work on one
row; the rows of different positions do not interact (except through $w$ and $b$, step 1).

**Step 1, the affine part** $y_i = w_i \hat{x}_i + b_i$. Each $w_i$ and $b_i$ is used at every
position, so their gradients sum over all (b, t):
$$db_i = \sum_{b,t} dy_i, \qquad dw_i = \sum_{b,t} dy_i\,\hat{x}_i, \qquad d\hat{x}_i = dy_i\, w_i$$

**Step 2, the hard part.** $\hat{x}_j = (x_j - \mu)\,r$ depends on every $x_i$ of its row in three
ways: directly, through $\mu$, and through $r$. The pieces:
- $\partial \mu / \partial x_i = 1/C$.
- $\partial \sigma^2 / \partial x_i = \frac{2}{C}\sum_j (x_j - \mu)(\delta_{ij} - \frac{1}{C})
  = \frac{2}{C}(x_i - \mu)$; the $\frac1C$ part drops out because $\sum_j (x_j - \mu) = 0$.
- $\partial r / \partial x_i = -\frac{1}{2}(\sigma^2 + \epsilon)^{-3/2}\,\partial\sigma^2/\partial x_i
  = -r^3 (x_i - \mu)/C = -r^2\,\hat{x}_i / C$.

Product rule on $\hat{x}_j = (x_j - \mu)\, r$:
$$\frac{\partial \hat{x}_j}{\partial x_i} = r\left(\delta_{ij} - \frac{1}{C}\right) + (x_j - \mu)\frac{\partial r}{\partial x_i}
= r\left(\delta_{ij} - \frac{1}{C} - \frac{\hat{x}_j\,\hat{x}_i}{C}\right)$$

**Step 3, chain rule** over the $j$ of the row:
$$dx_i = \sum_j d\hat{x}_j \frac{\partial \hat{x}_j}{\partial x_i}
= r\left( d\hat{x}_i \;-\; \frac{1}{C}\sum_j d\hat{x}_j \;-\; \hat{x}_i\,\frac{1}{C}\sum_j d\hat{x}_j\,\hat{x}_j \right)$$

**Reading the result.** Take $d\hat{x}$, remove its mean (its component along the all-ones
direction) and its component along $\hat{x}$, then scale by $r$. That makes sense: shifting a row
$x$ by a constant, or stretching it about its mean, leaves $\hat{x}$ unchanged, so the loss cannot
depend on those two directions and the gradient has no component along them. Backward needs only
$x$, $w$ and the saved $\mu$, $r$. (Stretching changes $\hat{x}$ a tiny bit through $\epsilon$, so that
second component is small rather than exactly zero: a cosine of order $\epsilon/\sigma^2$.)
'''),
code(r'''
def layernorm_backward_scratch(dout, x, w, mean, rstd):
    norm = (x - mean[..., None]) * rstd[..., None]       # x hat, from the saved statistics
    db = dout.sum(axis=(0, 1))                           # step 1
    dw = (dout * norm).sum(axis=(0, 1))
    dnorm = dout * w
    dx = rstd[..., None] * (dnorm                        # step 3
                            - dnorm.mean(axis=-1, keepdims=True)
                            - norm * (dnorm * norm).mean(axis=-1, keepdims=True))
    return dx, dw, db


dout = rng.normal(size=(B, T, C))
dx, dw, db = layernorm_backward_scratch(dout, x, w, mean, rstd)
def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


print("dx along the shift direction (1, 1, ..., 1), largest over rows:", np.abs(dx.sum(axis=-1)).max())
print("dx along the stretch direction x - mean, largest over rows:    ",
      np.abs((unit(dx) * unit(x - mean[..., None])).sum(axis=-1)).max())
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
def loss():
    return float(np.sum(layernorm_forward_scratch(x, w, b)[0] * dout))


worst = gradcheck_table(loss, {"x": (x, dx), "w": (w, dw), "b": (b, db)})
assert worst < 1e-7
'''),
md(r'''
## llmnp's layernorm

`layernorm_forward(out, mean, rstd, inp, weight, bias)` writes the output and the two statistics;
`layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)` **adds** into all three
gradients. `dweight` and `dbias` accumulate as every parameter gradient does. `dinp` accumulates
too: a layernorm's input is the residual stream, whose gradient is the sum over every path that reads
it (notebook 06), so the model lets each layernorm add its share into one buffer.
'''),
code(r'''
out, mean_l, rstd_l = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
layernorm_forward(out, mean_l, rstd_l, x, w, b)
print("forward matches:", np.allclose(out, y), np.allclose(mean_l, mean), np.allclose(rstd_l, rstd))

dx_l, dw_l, db_l = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
layernorm_backward(dx_l, dw_l, db_l, dout, x, w, mean_l, rstd_l)
print("backward matches:", np.allclose(dx_l, dx), np.allclose(dw_l, dw), np.allclose(db_l, db))

dx_l[...] = 1.0                                      # whatever the buffer held before ...
layernorm_backward(dx_l, dw_l, db_l, dout, x, w, mean_l, rstd_l)
print("dinp accumulates:", np.allclose(dx_l, 1.0 + dx))  # ... gets the gradient added on top
'''),
md(r'''
## On the GPU

[llmnp/cuda/layernorm.cu](../llmnp/cuda/layernorm.cu): each row of C numbers is reduced to two
statistics, so a warp (32 threads that run in lockstep) shares one row, each thread summing a strided
part of it, and the partial sums are combined across the warp. Backward needs two such reductions per
row (the two means in step 3), and `dw`, `db` need a sum over all rows: each block of threads leaves
its partial sums in a scratch buffer and a second kernel adds those up, always in the same order.

Next: [03 matmul](03_matmul.ipynb), where almost all of the model's arithmetic happens.
'''),
]


# ------------------------------------------------------------------------------------ 03 matmul
NOTEBOOKS["03_matmul"] = [
md(r'''
# 03 · Matmul: the linear layer

Four of them in every block (qkv, attention projection, fc, fc projection) and one at the top (the
classifier, with `wte` as its weight). Each position's vector of C numbers becomes OC numbers, each a
weighted sum of the inputs plus a bias. The B·T positions are independent rows, so flatten them to
$N = B\cdot T$ rows. With the weight stored (out, in), as in PyTorch and llm.c:
$$y_{n,o} = \sum_{c} x_{n,c}\, W_{o,c} + b_o \qquad\Longleftrightarrow\qquad Y = X\,W^\top + b$$
with X (N, C), W (OC, C), b (OC), Y (N, OC).

The code: [llmnp/matmul.py](../llmnp/matmul.py); on the GPU: [llmnp/cuda/matmul.cu](../llmnp/cuda/matmul.cu).
'''),
code(r'''
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
'''),
md(r'''
## Forward, from scratch
'''),
code(r'''
def matmul_forward_scratch(x, W, b):
    return x @ W.T + b               # (B,T,C) @ (C,OC) + (OC,) -> (B,T,OC)


y = matmul_forward_scratch(x, W, b)
print(y.shape)
print("one element by the formula:", np.isclose(y[1, 2, 3], sum(x[1, 2, c] * W[3, c] for c in range(C)) + b[3]))
'''),
md(r'''
## Backward, step by step

Given `dout` $= dY$ (N, OC), find $dX$, $dW$, $db$. Work element by element, then recognize the
matrix product.

**The input.** $x_{n,c}$ appears in $y_{n,o}$ for every output $o$ of its own row, with coefficient
$W_{o,c}$. Chain rule, summing over those outputs:
$$dx_{n,c} = \sum_o dy_{n,o}\, W_{o,c} \qquad\Longrightarrow\qquad dX = dY\, W \quad\text{(N, OC) @ (OC, C)}$$

**The weight.** $W_{o,c}$ appears in $y_{n,o}$ for every row $n$, with coefficient $x_{n,c}$:
$$dW_{o,c} = \sum_n dy_{n,o}\, x_{n,c} \qquad\Longrightarrow\qquad dW = dY^\top X \quad\text{(OC, N) @ (N, C)}$$

**The bias.** $b_o$ appears in $y_{n,o}$ for every row with coefficient 1: $db_o = \sum_n dy_{n,o}$.

A shortcut to remember it: each gradient has its variable's shape, and there is only one way to
multiply $dY$ (N, OC) with the other operand to get it. The sums over $n$ are why a weight's
gradient grows with the batch: the same weight serves every position.
'''),
code(r'''
def matmul_backward_scratch(dout, x, W):
    dout2, x2 = dout.reshape(-1, W.shape[0]), x.reshape(-1, W.shape[1])   # (N,OC), (N,C)
    dx = dout2 @ W                   # (N,OC) @ (OC,C)
    dW = dout2.T @ x2                # (OC,N) @ (N,C)
    db = dout2.sum(axis=0)           # (OC,)
    return dx.reshape(x.shape), dW, db


dout = rng.normal(size=(B, T, OC))
dx, dW, db = matmul_backward_scratch(dout, x, W)
print("dx[1,2,3] by the formula:", np.isclose(dx[1, 2, 3], sum(dout[1, 2, o] * W[o, 3] for o in range(OC))))
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
def loss():
    return float(np.sum(matmul_forward_scratch(x, W, b) * dout))


worst = gradcheck_table(loss, {"x": (x, dx), "W": (W, dW), "b": (b, db)})
assert worst < 1e-8
'''),
md(r'''
## llmnp's matmul

`matmul_forward(out, inp, weight, bias)` and `matmul_backward(dinp, dweight, dbias, dout, inp,
weight)`. Their accumulate rules differ by buffer, and the docstring says which:
- `dweight` and `dbias` **accumulate** (`+=`), like every parameter gradient;
- `dinp` is **overwritten**: a matmul's input is a layernorm or GELU output that nothing else reads,
  so there is nothing to add to.

`bias` may be `None`: the classifier (`logits = lnf @ wte^T`) has none.
'''),
code(r'''
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
'''),
md(r'''
## Where the arithmetic is

A linear layer costs one multiply and one add per weight per row: $2\cdot C\cdot OC$ floating-point
operations (FLOPs) per token. Its backward is two such products ($dX$ and $dW$), twice the forward.
Hence the rule of thumb: training costs about $6N$ FLOPs per token for $N$ parameters (2 forward +
4 backward). Attention adds its own two products ($QK^\top$ and $PV$, notebook 04); everything else
(layernorm, GELU, softmax, residual adds) costs a few operations per number, negligible next to
these. For GPT-2 small, per token, forward only:
'''),
code(r'''
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
'''),
md(r'''
How fast is this machine at it? One matmul of the size of GPT-2 small's attention projection, on
1024 tokens:
'''),
code(r'''
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
'''),
md(r'''
An H100 GPU does dense bf16 matmuls at several hundred TFLOP/s, thousands of times more: that is
what [notebook 10](10_cuda.ipynb) is about. On the GPU the products themselves go to cuBLAS, NVIDIA's
matmul library; [llmnp/cuda/matmul.cu](../llmnp/cuda/matmul.cu) holds the small kernels around them:
adding the bias, and summing `dout`'s rows into `dbias`.

Next: [04 attention](04_attention.ipynb), the only layer where positions talk to each other.
'''),
]


# --------------------------------------------------------------------------------- 04 attention
NOTEBOOKS["04_attention"] = [
md(r'''
# 04 · Causal self-attention

Every other layer works on each position alone. Attention is where a position gathers information
from the positions before it. Each position emits three vectors: a **query** $q$ ("what am I looking
for"), a **key** $k$ ("what do I contain") and a **value** $v$ ("what I pass on"). Position $t$ scores
every earlier position $s$ by $q_t \cdot k_s$, turns the scores into weights with a softmax, and
outputs the weighted average of the values. For one head, with head size $hs$:
$$S_{ts} = \frac{q_t \cdot k_s}{\sqrt{hs}}\ \ (s \le t), \qquad S_{ts} = -\infty\ \ (s > t)$$
$$P_{ts} = \frac{e^{S_{ts}}}{\sum_{s'} e^{S_{ts'}}}, \qquad y_t = \sum_s P_{ts}\, v_s$$

- **Causal**: position $t$ only sees $s \le t$. The model is trained to predict token $t+1$ at every
  position at once; if position $t$ could see $t+1$ it would just copy it. $-\infty$ becomes a weight
  of exactly 0.
- **$\sqrt{hs}$**: a dot product of $hs$ unit-variance numbers has variance $hs$; dividing keeps the
  scores near unit size so the softmax does not saturate at initialization.
- **Heads**: the C channels are split into NH heads of $hs = C/NH$ channels, each attending on its
  own; their outputs are concatenated back to C channels.

The input is the qkv matmul's output, (B, T, 3C): Q, K and V blocks of C channels each, head $h$
being channels $h\cdot hs \dots (h+1)\cdot hs$ of each block.

The code: [llmnp/attention.py](../llmnp/attention.py); on the GPU: [llmnp/cuda/attention.cu](../llmnp/cuda/attention.cu).
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp.attention import attention_backward, attention_forward

rng = np.random.default_rng(0)
'''),
md(r'''
## Forward, from scratch

One head first, then the bookkeeping that cuts qkv into heads.
'''),
code(r'''
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
'''),
md(r'''
## Attention patterns

$P$ is a (T, T) matrix per head: row $t$ says where position $t$ looks. Causality makes it lower
triangular. The queries and keys below are built by hand to show three patterns trained heads are
known to learn, and a fourth head with random queries and keys, as at initialization:
- *previous token*: keys encode their position, each query asks for position $t-1$;
- *first token*: every query matches the key of position 0 (a resting place when nothing else fits);
- *uniform*: queries of zero score every key alike, so a position averages all its past.
'''),
code(r'''
T, hs = 12, 16
position = np.eye(T, hs)                       # key s = one-hot of s: "I am at position s"
heads = {
    "previous token": (8 * np.sqrt(hs) * np.roll(position, 1, axis=0), position),   # q_t asks for t-1
    "first token": (8 * np.sqrt(hs) * np.tile(position[0], (T, 1)), position),
    "uniform": (np.zeros((T, hs)), position),
    "random (initialization)": (rng.normal(size=(T, hs)), rng.normal(size=(T, hs))),
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
'''),
md(r'''
## Backward, step by step

For one head, backward gets $dy$ (T, hs) and must produce $dq$, $dk$, $dv$. The forward chain is
$q, k \to S \to P \to y$ (with $v$ joining at the end), so undo it in reverse.

**Step 1, $y = P v$.** A matrix product, exactly as in notebook 03:
$$dv = P^\top dy, \qquad dP = dy\, v^\top$$

**Step 2, the softmax, row by row.** Within a row $t$, $P_{s'} = e^{S_{s'}} / \sum e^{S}$ depends
on every $S_s$ of the row:
$$\frac{\partial P_{s'}}{\partial S_s} = P_{s'}\,(\delta_{ss'} - P_s)$$
(the $\delta$ from the numerator, the $-P_s$ from the normalizing sum). Chain rule over $s'$:
$$dS_s = \sum_{s'} dP_{s'}\, P_{s'}(\delta_{ss'} - P_s) = P_s\Big(dP_s - \sum_{s'} P_{s'}\, dP_{s'}\Big)$$

**Step 3, a shortcut.** The row sum in step 2 does not need $dP$ at all:
$$\sum_{s'} P_{ts'}\, dP_{ts'} = \sum_{s'} P_{ts'}\, (dy_t \cdot v_{s'}) = dy_t \cdot \sum_{s'} P_{ts'} v_{s'} = dy_t \cdot y_t$$
one dot product of $hs$ numbers, from the output forward already has.

**Step 4, the mask needs no code.** Where $s > t$, $P_{ts} = 0$, so $dS_{ts} = 0$: no gradient flows
to future positions, just as no information did.

**Step 5, $S = q k^\top / \sqrt{hs}$.** Another matrix product:
$$dq = dS\, k / \sqrt{hs}, \qquad dk = dS^\top q / \sqrt{hs}$$
'''),
code(r'''
def attention_head_backward_scratch(dy, q, k, v, P):
    hs = q.shape[1]
    dv = P.T @ dy                                          # step 1
    dP = dy @ v.T
    y = P @ v
    dS = P * (dP - (dy * y).sum(axis=1, keepdims=True))    # steps 2 and 3
    dq = dS @ k / np.sqrt(hs)                              # step 5
    dk = dS.T @ q / np.sqrt(hs)
    return dq, dk, dv


T, hs = 5, 4
q, k, v = rng.normal(size=(3, T, hs))
y, P = attention_head_scratch(q, k, v)
dy = rng.normal(size=(T, hs))
dq, dk, dv = attention_head_backward_scratch(dy, q, k, v, P)
print("step 3's shortcut equals the full row sum:", np.allclose((P * (dy @ v.T)).sum(axis=1), (dy * y).sum(axis=1)))
print("the last value is read only by the last query, so its gradient is P[-1,-1] dy[-1]:",
      np.allclose(dv[-1], P[-1, -1] * dy[-1]))
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
def loss():
    return float(np.sum(attention_head_scratch(q, k, v)[0] * dy))


worst = gradcheck_table(loss, {"q": (q, dq), "k": (k, dk), "v": (v, dv)})
assert worst < 1e-7
'''),
md(r'''
## Not storing P: the log-sum-exp

Backward needs $P$, a (T, T) matrix per head per sequence per layer. For GPT-2 small at B = 4,
T = 1024 that is large; so `llmnp` (like flash attention) saves only the log of each row's
normalizing sum,
$$\ell_t = \log \sum_{s} e^{S_{ts}}, \qquad\text{so that}\qquad P_{ts} = e^{S_{ts} - \ell_t},$$
T numbers per head, and backward recomputes $S$ (one small matmul) and $P$ from it.
'''),
code(r'''
B4, T4, NH12, L12 = 4, 1024, 12, 12
print(f"P for all layers: {L12 * B4 * NH12 * T4 * T4 * 4 / 2**30:.2f} GiB;  "
      f"the log-sum-exp instead: {L12 * B4 * NH12 * T4 * 4 / 2**20:.2f} MiB")

S = q @ k.T / np.sqrt(hs)
S[np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
lse = np.log(np.exp(S).sum(axis=1))                 # what forward keeps: T numbers
print("P recomputed from the scores and lse:", np.allclose(np.exp(S - lse[:, None]), P))
'''),
md(r'''
## llmnp's attention

`attention_forward(out, lse, qkv)` writes the output (B, T, C) and the log-sum-exp (B, NH, T);
`attention_backward(dqkv, dout, qkv, out, lse)` recomputes $P$ and overwrites `dqkv` (B, T, 3C):
its input is the qkv matmul's output, read by nothing else. Below, the multi-head version is checked
against the single-head scratch functions, head by head.
'''),
code(r'''
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
        for i, g in enumerate(attention_head_backward_scratch(dy, q[b, h], k[b, h], v[b, h], P)):
            expected[b, :, i, h] = g                 # i = 0, 1, 2: the Q, K, V blocks
print("backward matches:", np.allclose(dqkv, expected.reshape(B, T, 3 * C)))
'''),
md(r'''
## On the GPU

[llmnp/cuda/attention.cu](../llmnp/cuda/attention.cu) computes the same thing, flash-attention
style. The (T, T) scores are the expensive part: two matmuls per head, $QK^\top$ and $PV$, of
$T \times T \times hs$ each, and recomputing $S$ in backward adds more. The kernels never write $S$
or $P$ to memory at all: the forward walks over tiles of keys keeping a running maximum and sum per
query, which is exactly the log-sum-exp above, built up one tile at a time. The backward starts by
computing $D_t = dy_t \cdot y_t$ for every row, step 3's shortcut.

Next: [05 gelu](05_gelu.ipynb), the MLP's nonlinearity.
'''),
]


# -------------------------------------------------------------------------------------- 05 gelu
NOTEBOOKS["05_gelu"] = [
md(r'''
# 05 · GELU

The MLP of each block is `fcproj(gelu(fc(x)))`: widen to 4C channels, apply a nonlinearity to every
number on its own, narrow back to C. Without the nonlinearity the two matmuls would collapse into one
linear map. GPT-2 uses the GELU, "Gaussian error linear unit": the input times the probability that a
standard normal variable is below it,
$$\text{GELU}(x) = x\,\Phi(x),$$
a smooth version of $\text{ReLU}(x) = \max(0, x)$. GPT-2 was trained with a tanh approximation of
$\Phi$, and llm.c and `llmnp` use the same one:
$$\text{GELU}(x) \approx \tfrac{1}{2}\,x\,\big(1 + \tanh u\big), \qquad u = \sqrt{2/\pi}\,\big(x + 0.044715\,x^3\big)$$

The code: [llmnp/gelu.py](../llmnp/gelu.py); on the GPU: [llmnp/cuda/gelu.cu](../llmnp/cuda/gelu.cu).
'''),
code(r'''
import math

import numpy as np
import matplotlib.pyplot as plt

from llmnp.gelu import gelu_backward, gelu_forward

rng = np.random.default_rng(0)
S = math.sqrt(2 / math.pi)
'''),
md(r'''
## Forward, from scratch
'''),
code(r'''
def gelu_scratch(x):
    return 0.5 * x * (1 + np.tanh(S * (x + 0.044715 * x**3)))


def gelu_exact(x):
    Phi = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))   # the standard normal CDF
    return x * Phi


x = np.linspace(-4, 4, 401)
print("largest difference between the tanh form and the exact GELU on [-4, 4]:",
      f"{np.abs(gelu_scratch(x) - gelu_exact(x)).max():.1e}")
'''),
md(r'''
## Backward, step by step

GELU acts on each number alone, so backward is one derivative per number: $dx = dy \cdot
\text{GELU}'(x)$. To differentiate $\tfrac12 x (1 + \tanh u)$:

1. **Product rule** on $x$ times $(1 + \tanh u)$:
   $\;\tfrac12 (1 + \tanh u) + \tfrac12 x \,\frac{d}{dx}\tanh u$.
2. **Chain rule through tanh**, using $\frac{d}{du}\tanh u = 1 - \tanh^2 u$:
   $\;\frac{d}{dx}\tanh u = (1 - \tanh^2 u)\,\frac{du}{dx}$.
3. **The inner polynomial**: $\frac{du}{dx} = \sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\, x^2)$.

Together:
$$\text{GELU}'(x) = \tfrac12 (1 + \tanh u) + \tfrac12\, x\, (1 - \tanh^2 u)\, \sqrt{2/\pi}\,(1 + 3\cdot 0.044715\,x^2)$$
'''),
code(r'''
def gelu_backward_scratch(dout, x):
    th = np.tanh(S * (x + 0.044715 * x**3))
    du = S * (1 + 3 * 0.044715 * x**2)
    return dout * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du)
'''),
md(r'''
## The picture

Unlike ReLU, GELU is smooth at 0, lets a little negative signal through (its minimum is about
−0.17 near x = −0.75) and its derivative dips slightly below 0 there and overshoots 1 above. The tanh
approximation is indistinguishable from the exact curve at this scale; the right panel shows the
difference.
'''),
code(r'''
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
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
x = 1.5 * rng.normal(size=(2, 3, 8))
dout = rng.normal(size=x.shape)
dx = gelu_backward_scratch(dout, x)


def loss():
    return float(np.sum(gelu_scratch(x) * dout))


worst = gradcheck_table(loss, {"x": (x, dx)}, n=6)
assert worst < 1e-8
'''),
md(r'''
## llmnp's GELU

`gelu_forward(out, inp)` and `gelu_backward(dinp, inp, dout)`. `dinp` is **overwritten**, not
accumulated: GELU's input is the fc matmul's output, which nothing else reads. Backward needs only
the saved input `fch` (B, T, 4C), not the output.
'''),
code(r'''
out = np.empty_like(x)
gelu_forward(out, x)
print("forward matches:", np.allclose(out, gelu_scratch(x)))

dx_l = np.full_like(x, 99.0)
gelu_backward(dx_l, x, dout)
print("backward matches (and overwrote the 99s):", np.allclose(dx_l, dx))
'''),
md(r'''
## On the GPU

[llmnp/cuda/gelu.cu](../llmnp/cuda/gelu.cu) is the simplest kernel of all: one thread per number,
no thread talks to another. [Notebook 10](10_cuda.ipynb) reads it line by line and times it. It does
some twenty arithmetic operations per 8 bytes of memory traffic (read x, write y); a GPU can do far
more arithmetic than that per byte it moves, so the kernel's speed is set by memory bandwidth. That
is why GPU trainers like to fuse it into the matmul before it. llmnp goes half way: the fc matmul
leaves its bias out, and `bias_gelu_forward(out, inp, bias)` adds it on the way into GELU (its
backward also sums the bias gradient), so the (B, T, 4C) product is not written and read once more
just for the bias.

Next: [06 residual](06_residual.ipynb).
'''),
]


# ---------------------------------------------------------------------------------- 06 residual
NOTEBOOKS["06_residual"] = [
md(r'''
# 06 · Residual connections

Each block does not replace the residual stream $x$; it *adds* to it, twice:
$$x \leftarrow x + \text{attention branch}(x), \qquad x \leftarrow x + \text{MLP branch}(x)$$
The layer itself is the simplest there is, `out = inp1 + inp2`. What matters is what it does to the
backward pass. For $y = x + f(x)$:
$$dx = dy + \Big(\frac{\partial f}{\partial x}\Big)^{\!\top} dy$$
The first term is $dy$ itself, passed down unchanged: however many blocks sit above, the gradient of
the loss reaches the bottom of the model along this path without being multiplied by anything. The
branches add their corrections on top.

The code: [llmnp/residual.py](../llmnp/residual.py); on the GPU: [llmnp/cuda/residual.cu](../llmnp/cuda/residual.cu).
'''),
code(r'''
import inspect

import numpy as np
import matplotlib.pyplot as plt

from llmnp import model as llmnp_model
from llmnp.layernorm import layernorm_backward, layernorm_forward
from llmnp.matmul import matmul_backward, matmul_forward
from llmnp.residual import residual_backward, residual_forward

rng = np.random.default_rng(0)
'''),
md(r'''
## Forward and backward, from scratch

$\text{out} = a + b$, so $\partial\,\text{out}_i / \partial a_i = \partial\,\text{out}_i / \partial b_i = 1$:
both inputs receive `dout` unchanged. Written as llm.c writes it, adding into gradient buffers the
caller owns (`+=`), because $a$, the residual stream, also receives gradient from the branch that
reads it:
'''),
code(r'''
def residual_forward_scratch(a, b):
    return a + b


def residual_backward_scratch(da, db, dout):
    da += dout
    db += dout


a, b = rng.normal(size=(2, 2, 3, 4))
dout = rng.normal(size=a.shape)
da, db = np.zeros_like(a), np.zeros_like(b)
residual_backward_scratch(da, db, dout)
'''),
GRADCHECK_INTRO,
GRADCHECK,
code(r'''
def loss():
    return float(np.sum(residual_forward_scratch(a, b) * dout))


worst = gradcheck_table(loss, {"a": (a, da), "b": (b, db)})
assert worst < 1e-8
'''),
md(r'''
## A whole branch: where the gradient of the stream accumulates

Now a real pre-LN branch, as GPT-2 has: $y = x + \text{matmul}(\text{layernorm}(x))$, built from
`llmnp`'s layers. Backward, step by step:

1. The identity path: $dx$ starts as $dy$.
2. The branch's last layer, the matmul, gets $dy$ as its `dout` and produces $d\,\text{ln}$.
3. The layernorm's backward turns $d\,\text{ln}$ into its input gradient and **adds** it into $dx$,
   the same buffer that already holds $dy$.

This is why `layernorm_backward` accumulates into `dinp`: there is one buffer for the stream's
gradient, and every reader of the stream adds its share into it.
'''),
code(r'''
B, T, C = 2, 3, 4
x = rng.normal(size=(B, T, C))
lnw, lnb = 1 + 0.1 * rng.normal(size=C), 0.1 * rng.normal(size=C)
W, bias = rng.normal(size=(C, C)), rng.normal(size=C)


def block_forward(x):
    ln, mean, rstd = np.empty_like(x), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(ln, mean, rstd, x, lnw, lnb)
    y = np.empty_like(x)
    matmul_forward(y, ln, W, bias)                     # the branch
    residual_forward(y, x, y)                          # y = x + branch, in place
    return y, ln, mean, rstd


y, ln, mean, rstd = block_forward(x)
dy = rng.normal(size=y.shape)

dx = dy.copy()                                         # 1: the identity path
dln = np.empty_like(ln)
dW, dbias = np.zeros_like(W), np.zeros_like(bias)
dlnw, dlnb = np.zeros_like(lnw), np.zeros_like(lnb)
matmul_backward(dln, dW, dbias, dy, ln, W)             # 2: the branch's dout is dy
layernorm_backward(dx, dlnw, dlnb, dln, x, lnw, mean, rstd)   # 3: adds into dx


def loss():
    return float(np.sum(block_forward(x)[0] * dy))


worst = gradcheck_table(loss, {"x": (x, dx), "W": (W, dW), "lnw": (lnw, dlnw)})
assert worst < 1e-7
'''),
md(r'''
`GPT2.backward` in [llmnp/model.py](../llmnp/model.py) does exactly this with one buffer, `dres`,
for all blocks: the projections read it as their `dout`, the layernorms add into it, and it walks
down the model from the top to the encoder. The lines that touch it:
'''),
code(r'''
for line in inspect.getsource(llmnp_model.GPT2.backward).splitlines():
    if "dres" in line:
        print(line.strip())
'''),
md(r'''
## Why it matters: the gradient at depth

A stack of 32 layers with small weights (GPT-2 initializes its weights small), each $h = \tanh(W x)$.
Without residual connections, $x_{l+1} = h$ and the gradient is multiplied by $W^\top
\text{diag}(\tanh')$ at every layer, shrinking geometrically on its way down. With them,
$x_{l+1} = x_l + \alpha h$ (α = 1/√(2·32) plays the role of GPT-2's scaled-down projection init)
and the identity path carries it down intact.
'''),
code(r'''
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
'''),
md(r'''
## llmnp's residual

`residual_forward(out, inp1, inp2)` and `residual_backward(dinp1, dinp2, dout)`, both gradients
accumulating. `out` may be the same buffer as an input: the model writes a branch's projection
straight into the stream's next buffer and adds the stream to it in place.
'''),
code(r'''
out = np.empty_like(a)
residual_forward(out, a, b)
print("forward matches:", np.allclose(out, a + b))
da_l, db_l = np.zeros_like(a), np.ones_like(b)
residual_backward(da_l, db_l, dout)
print("backward matches, accumulating:", np.allclose(da_l, dout), np.allclose(db_l, 1 + dout))
'''),
md(r'''
On the GPU, [llmnp/cuda/residual.cu](../llmnp/cuda/residual.cu) is an elementwise add, the kind of
kernel worth fusing with the layernorm that reads its output.

Next: [07 classifier](07_classifier.ipynb), where the loss comes from.
'''),
]


# -------------------------------------------------------------------------------- 07 classifier
NOTEBOOKS["07_classifier"] = [
md(r'''
# 07 · The classifier: softmax and cross-entropy

At the top, each position's vector becomes one score per vocabulary entry, the **logits** $z$,
through a matmul with `wte` itself (the same table the encoder reads: "tied" weights, notebook 03 for
the matmul). The softmax turns scores into probabilities, and the loss at a position is the negative
log of the probability given to the token that really comes next, $y$:
$$p_i = \frac{e^{z_i}}{\sum_{j<V} e^{z_j}}, \qquad \ell = -\log p_y, \qquad L = \frac{1}{B\,T}\sum_{b,t} \ell_{b,t}$$
A perfect prediction ($p_y = 1$) costs 0; a uniform guess over V tokens costs $\ln V$.

**Padded vocabulary.** The logits have Vp ≥ V columns (50304 for GPT-2's 50257 tokens: multiples of
128 make faster matmuls). Columns V…Vp−1 are not tokens: they are left out of the softmax, their
probability is 0 and they get no gradient.

The code: [llmnp/classifier.py](../llmnp/classifier.py); on the GPU: [llmnp/cuda/classifier.cu](../llmnp/cuda/classifier.cu).
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward, softmax_forward

rng = np.random.default_rng(0)
B, T, V, Vp = 2, 3, 5, 8
logits = rng.normal(size=(B, T, Vp))                 # (B,T,Vp); columns 5, 6, 7 are padding
targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
'''),
md(r'''
## Forward, from scratch

Subtracting a row's maximum before `exp` changes nothing mathematically (it cancels between numerator
and denominator) and keeps `exp` from overflowing:
'''),
code(r'''
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
'''),
md(r'''
## Backward, step by step

Write one position's loss in terms of the logits directly:
$$\ell = -\log \frac{e^{z_y}}{\sum_j e^{z_j}} = -z_y + \log \sum_{j<V} e^{z_j}$$

1. The first term: $\partial(-z_y)/\partial z_i = -1$ if $i = y$, else 0.
2. The second: $\partial \log\sum_j e^{z_j} / \partial z_i = e^{z_i} / \sum_j e^{z_j} = p_i$.

So
$$\frac{\partial \ell}{\partial z_i} = p_i - [\,i = y\,]$$
**prediction minus truth**. Each wrong token is pushed down in proportion to the probability it got;
the right one is pushed up by $1 - p_y$; the pushes sum to zero. Going through the softmax and the log
separately would need the softmax's (V, V) Jacobian per position; fused, it is one subtraction.

The mean over the B·T positions multiplies every position's gradient by $1/(B\,T)$, `dloss` in the
code (and by $1/\text{steps}$ more when several micro-batches are averaged, notebook 09).
Padded columns $i \ge V$ do not appear in $\ell$: their gradient is 0.
'''),
code(r'''
def crossentropy_softmax_backward_scratch(probs, targets, dloss):
    dlogits = probs * dloss                           # p_i, and 0 in the padded columns
    B, T = targets.shape
    dlogits[np.arange(B)[:, None], np.arange(T), targets] -= dloss   # minus 1 at the target
    return dlogits


dloss = 1.0 / (B * T)
dlogits = crossentropy_softmax_backward_scratch(probs, targets, dloss)
print("each row of dlogits sums to 0:", np.allclose(dlogits.sum(axis=-1), 0))
'''),
code(r'''
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
'''),
GRADCHECK_INTRO,
md(r'''
Here no random `dout` is needed: the mean loss is already a single number.
'''),
GRADCHECK,
code(r'''
def loss():
    return float(crossentropy_scratch(softmax_scratch(logits, V), targets).mean())


worst = gradcheck_table(loss, {"logits": (logits, dlogits)}, n=8)
assert worst < 1e-8
'''),
md(r'''
## llmnp's classifier

Training needs the loss and `dlogits`, never the probabilities themselves. So llmnp's loss,
`crossentropy_forward(losses, lse, logits, targets, V)`, works from the logits directly, as the first
line of the derivation above, $\ell = \log \sum_{j<V} e^{z_j} - z_y$ (the sum max-subtracted, as the
softmax), leaves the logits as they are, and keeps that log-sum-exp, one number per position, in
`lse`. Since $p_i = e^{z_i - \text{lse}}$, the fused
`crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V)` recomputes the softmax from the
logits in one pass and writes $(p - \text{onehot}) \cdot dloss$; `dlogits` may be the logits buffer
itself, which is what the model passes, so no (B, T, Vp) buffer besides the logits is ever needed
(after `backward()`, `model.logits` holds dlogits). `softmax_forward(probs, logits, V)` remains for
sampling.
'''),
code(r'''
probs_l, losses_l, lse = np.empty_like(logits), np.empty((B, T)), np.empty((B, T))
softmax_forward(probs_l, logits, V)
crossentropy_forward(losses_l, lse, logits, targets, V)
print("forward matches:", np.allclose(probs_l, probs), np.allclose(losses_l, losses))

buf = logits.copy()                                                  # (B,T,Vp), as the model's logits
crossentropy_softmax_backward(buf, buf, lse, targets, dloss, V)      # in place: the logits become dlogits
print("backward matches, written over the logits:", np.allclose(buf, dlogits))
'''),
md(r'''
## A fresh model's loss is ln V

At initialization the logits are all close to 0, the softmax is nearly uniform, and the loss is
nearly $\ln V$. This is the first number to check when training starts (notebook 09): 10.8 for
GPT-2's 50257 tokens.
'''),
code(r'''
config = GPT2Config.tiny(vocab_size=100, max_seq_len=16)
model = GPT2(config, seed=0)
tokens = rng.integers(0, config.vocab_size, size=(4, 17))
loss0 = float(model.forward(tokens[:, :-1], tokens[:, 1:]))
print(f"fresh model: loss {loss0:.4f}, ln V = {np.log(config.vocab_size):.4f}")
print(f"GPT-2: ln 50257 = {np.log(50257):.2f}")
'''),
md(r'''
## On the GPU

[llmnp/cuda/classifier.cu](../llmnp/cuda/classifier.cu): one block of threads per position reduces
its row of logits to a maximum and a sum (`block_max`, `block_sum`). The loss kernel reads the row
once, each thread keeping a running maximum and a sum it rescales when the maximum grows, and writes
two numbers, the loss and the log-sum-exp; the backward kernel reads the row once more and writes
`dlogits` over the logits, as here. The (B, T, Vp) logits are the largest activation of the model (notebook 00), so every
pass over them counts, and a probabilities buffer beside them would cost as much again (6.6 GB for
GPT-2 small at B = 64, T = 1024 in bf16); llm.c's classifier is fused the same way.

Next: [08 adamw](08_adamw.ipynb), what to do with the gradients.
'''),
]


# ------------------------------------------------------------------------------------- 08 adamw
NOTEBOOKS["08_adamw"] = [
md(r'''
# 08 · AdamW: from gradients to a step

Backward gives $g = \partial L/\partial\theta$ for all parameters. Plain gradient descent steps
$\theta \leftarrow \theta - \text{lr}\cdot g$, which moves every parameter in proportion to its own
gradient: parameters with tiny gradients barely move, those with large ones may overshoot. AdamW,
what GPT-2 and llm.c train with, keeps two running averages per parameter and divides one by the
other. At step $t = 1, 2, \dots$:
$$m \leftarrow \beta_1 m + (1-\beta_1)\, g \qquad\qquad v \leftarrow \beta_2 v + (1-\beta_2)\, g^2$$
$$\hat m = \frac{m}{1-\beta_1^t} \qquad\qquad \hat v = \frac{v}{1-\beta_2^t}$$
$$\theta \leftarrow \theta - \text{lr}\left(\frac{\hat m}{\sqrt{\hat v} + \epsilon} + \lambda\,\theta\right)$$

- $m$, the **momentum**, is a running mean of the gradient: noise between batches averages out.
- $v$ is a running mean of the squared gradient; $\sqrt{\hat v}$ is the gradient's typical size, so
  $\hat m/\sqrt{\hat v}$ is about ±1 for a parameter whose gradient keeps its sign, whatever its
  scale: **every parameter moves about lr per step**.
- $\hat m, \hat v$ correct a bias: $m$ and $v$ start at 0, so early averages are too small.
- $\lambda\theta$ is **weight decay**, pulling weights towards 0, *decoupled*: applied to $\theta$
  directly, not added to $g$ (where Adam's division would rescale it). That is the W in AdamW.

llm.c's settings for GPT-2: $\beta_1 = 0.9$, $\beta_2 = 0.95$, $\epsilon = 10^{-8}$, and in its
GPT-2 reproduction runs $\lambda = 0.1$ (the `-c` flag), on the 2-D weight matrices only.

The code: [llmnp/adamw.py](../llmnp/adamw.py); on the GPU: [llmnp/cuda/adamw.cu](../llmnp/cuda/adamw.cu).
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.adamw import adamw_update
from llmnp.params import DECAYED_PARAMETERS

rng = np.random.default_rng(0)
'''),
md(r'''
## From scratch

There is no backward here, only the update, so no finite differences either: the check is that
`llmnp`'s in-place, chunked version computes the same numbers as these five lines.
'''),
code(r'''
def adamw_scratch(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * p)
    return p, m, v


hyper = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
p = rng.normal(size=1000)
m, v = np.zeros_like(p), np.zeros_like(p)
p_l, m_l, v_l = p.copy(), m.copy(), v.copy()
for t in range(1, 6):
    g = rng.normal(size=p.shape)
    p, m, v = adamw_scratch(p, g, m, v, t=t, **hyper)
    adamw_update(p_l, g, m_l, v_l, t=t, **hyper)          # in place, on flat 1-D buffers
print("5 steps agree:", np.allclose(p_l, p), np.allclose(m_l, m), np.allclose(v_l, v))
'''),
md(r'''
## Every parameter moves about lr

At the first step $\hat m = g$ and $\hat v = g^2$, so the step is $\text{lr}\cdot g/|g| =
\pm\text{lr}$, for a gradient of $10^{-6}$ as for one of $10^{3}$ ($\epsilon$ shows only in the first: it
keeps the division safe when a gradient is 0):
'''),
code(r'''
g = np.array([1e-6, -3e-2, 5.0, -1e3])
p0 = np.zeros(4)
p1, _, _ = adamw_scratch(p0, g, np.zeros(4), np.zeros(4), lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, t=1)
for gi, step in zip(g, p1 - p0):
    print(f"gradient {gi:10.0e}   step {step:+.6f}")
'''),
md(r'''
## Bias correction

With a gradient that is always 1, $m$ should be 1. It starts at 0 and creeps up as $1 - \beta_1^t$;
dividing by exactly that factor gives the right answer from the first step. ($v$ is slower still:
$\beta_2 = 0.95$.)
'''),
code(r'''
steps = np.arange(1, 61)
m = v = 0.0
ms, vs = [], []
for t in steps:
    g = 1.0 + 0.1 * rng.normal()                       # a slightly noisy gradient around 1
    m = 0.9 * m + 0.1 * g
    v = 0.95 * v + 0.05 * g * g
    ms.append(m)
    vs.append(v)
ms, vs = np.array(ms), np.array(vs)

fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(steps, ms, label="m (running mean of g)")
ax.plot(steps, ms / (1 - 0.9**steps), label="m / (1 - β1^t)")
ax.plot(steps, np.sqrt(vs), label="sqrt(v)")
ax.plot(steps, np.sqrt(vs / (1 - 0.95**steps)), label="sqrt(v / (1 - β2^t))")
ax.axhline(1, color="gray", lw=0.5)
ax.set_xlabel("step t")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
'''),
md(r'''
## Why divide: a valley with one steep side

Minimize $f(x, y) = \tfrac12(100\,x^2 + y^2)$. Gradient descent must keep lr below $2/100$ or it
diverges along the steep $x$; with that lr it crawls along the shallow $y$. Adam normalizes each
coordinate by its own gradient size and moves along both at the same pace (then hovers around the
minimum at a distance set by lr, which is why training lowers lr towards the end: notebook 09).
'''),
code(r'''
def grad_f(z):
    return np.array([100.0, 1.0]) * z


def descend(step_fn, z0, n=60):
    path, z, state = [z0], z0.copy(), {}
    for t in range(1, n + 1):
        z = step_fn(z, grad_f(z), state, t)
        path.append(z)
    return np.array(path)


def sgd(z, g, state, t, lr=0.018):
    return z - lr * g


def adam(z, g, state, t, lr=0.1):
    z, state["m"], state["v"] = adamw_scratch(z, g, state.get("m", 0 * z), state.get("v", 0 * z),
                                              lr, 0.9, 0.95, 1e-8, 0.0, t)
    return z


z0 = np.array([-1.0, 3.0])
X, Y = np.meshgrid(np.linspace(-1.5, 1.5, 200), np.linspace(-1, 3.5, 200))
fig, ax = plt.subplots(figsize=(6, 4))
ax.contour(X, Y, 0.5 * (100 * X**2 + Y**2), levels=np.geomspace(0.05, 150, 12), colors="lightgray")
for name, fn in [("gradient descent, lr 0.018", sgd), ("Adam, lr 0.1", adam)]:
    path = descend(fn, z0)
    distance = np.linalg.norm(path[-1])
    ax.plot(path[:, 0], path[:, 1], "o-", ms=2.5, label=f"{name}: {distance:.2f} from the minimum after 60 steps")
ax.plot(0, 0, "k*")
ax.set_xlabel("x (steep)")
ax.set_ylabel("y (shallow)")
ax.legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()
'''),
md(r'''
## On the model: clipping, weight decay, one flat buffer

`GPT2.update(lr, beta1, beta2, eps, weight_decay, t, grad_scale)` runs `adamw_update` over each
tensor's slice of the flat buffers (notebook 00), with weight decay only on the matrices in
`DECAYED_PARAMETERS`: biases and layernorm parameters are few, and pulling a layernorm's scale
towards 0 would fight its purpose.

**Gradient clipping.** A rare bad batch can produce a huge gradient. llm.c computes the norm of the
whole gradient, $\|g\| = \sqrt{\sum g_i^2}$ over all parameters, and if it exceeds 1 scales every
gradient by $1/\|g\|$: `grad_scale` multiplies the gradients inside the update. Below, the model's
update is checked against the scratch function, tensor by tensor:
'''),
code(r'''
print("weight decay on:", ", ".join(DECAYED_PARAMETERS))

config = GPT2Config.tiny(vocab_size=50)
model = GPT2(config, dtype=np.float64, seed=0)
tokens = rng.integers(0, config.vocab_size, size=(2, 9))
model.forward(tokens[:, :-1], tokens[:, 1:])
model.zero_grad()
model.backward()
norm = model.grad_norm()
scale = min(1.0, 0.5 / norm)                             # clip at 0.5 here, to see it act
print(f"gradient norm {norm:.4f} -> grad_scale {scale:.4f}")

before = {name: p.copy() for name, p in model.params.items()}
model.update(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, t=1, grad_scale=scale)
for name, p in before.items():
    wd = 0.1 if name in DECAYED_PARAMETERS else 0.0
    expected, _, _ = adamw_scratch(p, scale * model.grads[name], 0, 0, 1e-2, 0.9, 0.95, 1e-8, wd, 1)
    assert np.allclose(model.params[name], expected), name
print("model.update matches the scratch AdamW on all 16 tensors")
'''),
md(r'''
The optimizer state is two more copies of the parameters, `m_memory` and `v_memory`, in the same
flat layout. With many GPUs, that state can be split between them instead of copied
([notebook 11](11_data_parallel.ipynb), ZeRO-1). On the GPU,
[llmnp/cuda/adamw.cu](../llmnp/cuda/adamw.cu) is one elementwise kernel over the flat buffers.

Next: [09 training](09_training.ipynb), all of it together.
'''),
]


# ---------------------------------------------------------------------------------- 09 training
NOTEBOOKS["09_training"] = [
md(r'''
# 09 · Training a small GPT-2 on Shakespeare

Everything so far, in one loop: forward (notebooks 01–07), backward (the same, in reverse), gradient
clipping and AdamW (08), with a learning-rate schedule. The model is tiny and trains on this CPU in a
few seconds; `train_gpt2.py` runs the same loop, with llm.c's flags and logs, on GPT-2 sized models.

The text is the Shakespeare that ships with the repository (`data/shakespeare.txt`, public domain).
'''),
code(r'''
import time

import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.data import CORPUS_TEXT
from llmnp.schedule import get_lr
from llmnp.tokenizer import decode, encode

text = open(CORPUS_TEXT, encoding="utf-8").read()
print(f"{len(text):,} characters")
print(text[200_000:200_400])
'''),
md(r'''
## Tokens

GPT-2 reads text as byte-pair-encoded tokens: frequent words are one token, rare ones split into
pieces, 50257 tokens in all.
'''),
code(r'''
line = "To be, or not to be, that is the question:"
ids = encode(line)
print(ids)
print([decode([i]) for i in ids])
'''),
md(r'''
With a vocabulary that large, a tiny model would be almost all classifier: `wte` alone would hold
50304 × C parameters, and the (B, T, Vp) logits would dominate every step. For a model that learns
something visible in seconds, this notebook uses **characters** as tokens instead: the vocabulary is
the set of characters in the text. The model and the training code do not change at all; only V does.
'''),
code(r'''
chars = sorted(set(text))
V = len(chars)
stoi = {c: i for i, c in enumerate(chars)}
data = np.array([stoi[c] for c in text], dtype=np.int32)
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]          # the last 10% is held out
print(f"V = {V} characters:", repr("".join(chars)))


def to_text(ids):
    return "".join(chars[i] for i in ids)
'''),
md(r'''
## The model and the batches

Two layers of 64 channels, 4 heads, 64 characters of context. A batch is B windows of T + 1
characters at random places in the text: inputs are the first T, targets the same shifted by one, so
every position is a next-character prediction.
'''),
code(r'''
B, T = 16, 64
config = GPT2Config.tiny(vocab_size=V, max_seq_len=T, num_layers=2, num_heads=4, channels=64)
model = GPT2(config, seed=0)
print(config)
print(f"{model.num_parameters:,} parameters")

rng = np.random.default_rng(0)


def get_batch(data):
    starts = rng.integers(0, len(data) - T - 1, size=B)
    x = np.stack([data[s:s + T] for s in starts])            # (B,T)
    y = np.stack([data[s + 1:s + T + 1] for s in starts])    # (B,T), shifted by one
    return x, y


def val_loss(batches=8):
    return float(np.mean([float(model.forward(*get_batch(val_data))) for _ in range(batches)]))


# The first forward allocates the activations for its (B, T): give it the training size.
print(f"loss before training {val_loss():.3f}, ln V = {np.log(V):.3f}")
'''),
md(r'''
## Sampling

To generate, run the model on the text so far, take the logits at the last position (the prediction
of the next character), turn them into probabilities with a softmax, draw a character, append, repeat.
The context is cut to the last T characters, the most the position table `wpe` covers.
'''),
code(r'''
def sample(prompt, n=300, seed=1):
    gen = np.random.default_rng(seed)
    ids = [stoi[c] for c in prompt]
    for _ in range(n):
        context = np.array([ids[-T:]], dtype=np.int32)          # (1, t)
        model.forward(context)
        logits = model.logits[0, -1, :V].astype(np.float64)     # last position, real tokens only
        p = np.exp(logits - logits.max())
        ids.append(int(gen.choice(V, p=p / p.sum())))
    return to_text(ids)


before = sample("ROMEO:\n")
print(before)
'''),
md(r'''
## The training loop

Per step: a batch, forward (the loss), `zero_grad`, backward (gradients), the gradient norm and the
clipping scale, one AdamW step. The learning rate warms up linearly for the first 10% of the steps
(AdamW's first steps rest on poor estimates of $v$), then decays along a cosine to a tenth of its
peak (notebook 08: with a smaller lr, the model settles closer to a minimum).
'''),
code(r'''
steps, lr_max = 300, 1e-2
train_losses, val_points = [], []
start = time.perf_counter()
for step in range(steps):
    x, y = get_batch(train_data)
    loss = float(model.forward(x, y))
    model.zero_grad()
    model.backward()
    norm = model.grad_norm()
    lr = get_lr(step, steps, lr_max, warmup=steps // 10, final_frac=0.1)
    model.update(lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, t=step + 1,
                 grad_scale=min(1.0, 1.0 / norm))                   # clip the gradient norm at 1
    train_losses.append(loss)
    if step % 50 == 0 or step == steps - 1:
        val_points.append((step, val_loss()))
        print(f"step {step:4d} | loss {loss:.4f} | val {val_points[-1][1]:.4f} | norm {norm:6.3f} | "
              f"lr {lr:.2e} | {time.perf_counter() - start:5.1f} s")
'''),
code(r'''
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(train_losses, alpha=0.35, label="train (each batch)")
smooth = np.convolve(train_losses, np.ones(20) / 20, mode="valid")
ax.plot(np.arange(19, steps), smooth, label="train (mean of 20)")
ax.plot(*zip(*val_points), "o-", label="validation (held-out text)")
ax.axhline(np.log(V), color="gray", ls="--", lw=1, label="ln V: uniform guessing")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per character)")
ax.legend()
plt.tight_layout()
plt.show()
'''),
md(r'''
## Samples, before and after

Same prompt, same random draws. Before training: characters drawn almost uniformly. After a few
seconds: the shape of a play, speaker names in capitals on a line of their own, line breaks, short
words, spaces in sensible places. Real English takes a bigger model and thousands of steps; the
validation loss staying close to the training loss says the model learned the text's patterns rather
than memorizing its batches.
'''),
code(r'''
print("---- before training ----")
print(before)
print("\n---- after", steps, "steps ----")
print(sample("ROMEO:\n"))
'''),
md(r'''
## The same at GPT-2 scale

`train_gpt2.py` is this loop with llm.c's data loader (token shards of GPT-2 tokens), flags,
checkpoints and logging, and `--device cuda` swaps every layer function for its CUDA kernel
([notebook 10](10_cuda.ipynb)); with several GPUs, each takes a part of the batch
([notebook 11](11_data_parallel.ipynb)). For instance, on the shipped Shakespeare with a 6-layer
model: `python train_gpt2.py -e d6 -b 4 -t 64 -x 20`.
'''),
]


# -------------------------------------------------------------------------------------- 10 cuda
NOTEBOOKS["10_cuda"] = [
md(r'''
# 10 · CUDA: one kernel, line by line

On a GPU, `llmnp` runs the same model code with every layer function swapped for a launcher of the
same name in `llmnp.cuda`, each starting a CUDA kernel from `llmnp/cuda/<layer>.cu` (and cuBLAS for the
matmuls). A kernel is a C++ function that thousands of GPU threads run at once, each on its own small
piece of the data.

This notebook reads the simplest one, GELU's forward (notebook 05), line by line, and the Python
launcher that starts it. The reading and a compile step work on any machine; the cells that **run**
kernels need an NVIDIA GPU with CuPy, and without one they print a note and skip.
'''),
code(r'''
import os
import time

import numpy as np
import matplotlib.pyplot as plt

import llmnp
from llmnp import GPT2, GPT2Config
from llmnp.gelu import gelu_forward

CUDA_DIR = os.path.join(os.path.dirname(llmnp.__file__), "cuda")
GELU_CU = os.path.join(CUDA_DIR, "gelu.cu")


def have_gpu():
    try:
        import cupy
        return cupy.cuda.is_available()
    except Exception:            # CuPy missing, or its CUDA libraries
        return False


GPU = have_gpu()
print("kernel sources:", sorted(f for f in os.listdir(CUDA_DIR) if f.endswith((".cu", ".cuh"))) if os.path.isdir(CUDA_DIR) else "none yet")
print("GPU available:", GPU)
'''),
md(r'''
## The whole file
'''),
code(r'''
def show(path, start=None, stop=None):
    """Print a file with line numbers: all of it, or from the first line containing `start` through
    the next line containing `stop` (just that line without `stop`)."""
    if not os.path.exists(path):
        print(f"({os.path.relpath(path, os.path.dirname(CUDA_DIR))} is not there yet)")
        return
    lines = open(path).read().splitlines()
    first, last = 0, len(lines) - 1
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        assert first is not None, f"{start!r} is no longer in {path}: this walkthrough needs updating"
        last = first if stop is None else next(i for i in range(first, len(lines)) if stop in lines[i])
    for i in range(first, last + 1):
        print(f"{i + 1:3d}  {lines[i]}")


show(GELU_CU)
'''),
md(r'''
## Line by line

**The header.** What the file is, the formula, and the one idea of the implementation. It includes
`common.cuh`, the helpers every kernel file shares. The relevant part of that:
'''),
code(r'''
COMMON = os.path.join(CUDA_DIR, "common.cuh")
show(COMMON, "#if LLMNP_BF16", "#endif")
show(COMMON, "__device__ __forceinline__ float toF(float", "#endif")
show(COMMON, "#define PACK", "aligned16")
'''),
md(r'''
- `floatX` is the storage type: `float`, or `__nv_bfloat16` (16-bit brain float) when the launcher
  compiles the file with `-DLLMNP_BF16=1`. One source, two builds. Arithmetic is always done in
  `float`: `toF` converts on load and `fromF` on store (rounding to bf16 if that is the storage).
- `PACK` elements of `floatX` fill 16 bytes: 4 floats or 8 bf16. `x128` is a 16-byte-aligned struct
  of them, and `load128` / `store128` move one with a single memory instruction.
- `aligned16` checks that a pointer is a multiple of 16 bytes, which 16-byte loads require.

**The math**, as in `llmnp/gelu.py`:
'''),
code(r'''
show(GELU_CU, "#define GELU_SCALE")
show(GELU_CU, "__device__ __forceinline__ float gelu(", "}")
'''),
md(r'''
- `#define` pastes the constant $\sqrt{2/\pi}$ into the code; the `f` suffix makes it a `float`
  (a bare `0.797...` would be a `double`, and double arithmetic is many times slower on most GPUs).
- `__device__`: this function runs on the GPU and is called from kernels, not from Python.
  `__forceinline__` pastes its body into the caller, so there is no call overhead.
- `tanhf` is the single-precision tanh of CUDA's math library.

**The kernel's signature.**
'''),
code(r'''
show(GELU_CU, "gelu_forward_kernel1(")
'''),
md(r'''
- `__global__` marks a **kernel**: launched from the host (Python here), run by every thread of a
  *grid* of thread *blocks*.
- `extern "C"` turns off C++ name mangling, so the launcher can ask for the kernel by its plain name.
- `out` and `inp` are pointers into GPU memory: the CuPy arrays' data. `n` is the element count,
  `long long` (64-bit) because a (B, T, 4C) activation can exceed $2^{31}$ elements.
- Kernels return nothing: results go through the output pointer.

**Which elements is this thread's?**
'''),
code(r'''
show(GELU_CU, "const long long i = ", "if (i >= n) return;")
'''),
md(r'''
Every thread runs this same code; only the built-in indices differ. `blockIdx.x` is the block's
number in the grid, `blockDim.x` the threads per block (256, set by the launcher), `threadIdx.x` the
thread's number within its block. So `blockIdx.x * blockDim.x + threadIdx.x` numbers all threads of
the grid 0, 1, 2, …, and thread number $j$ takes the PACK elements starting at $i = j \cdot
\text{PACK}$. The cast to `long long` comes first so the product cannot overflow 32 bits. The grid is
rounded up to whole blocks, so the last threads may have nothing to do: they return.

**The fast path: 16 bytes in, 16 bytes out.**
'''),
code(r'''
show(GELU_CU, "if (i + PACK <= n && aligned16(out)", "store128(out + i, o);")
'''),
md(r'''
If all PACK elements exist and both pointers are aligned, the thread loads its PACK inputs with one
instruction, applies `gelu` to each in `float`, and stores the PACK results with one instruction.
`PACK` is a compile-time constant, so the compiler unrolls the small loop completely. Why bother?
GELU does ~20 arithmetic operations per element but must read and write 4 bytes each (in fp32): its
speed is set by memory traffic, and fewer, wider memory instructions use the memory system better.

**The slow path: the tail.**
'''),
code(r'''
show(GELU_CU, "for (long long k = i; k < n && k < i + PACK; k++) out[k]")
'''),
md(r'''
The last thread may own fewer than PACK elements (n not a multiple of PACK), or a pointer may be
unaligned (a view starting mid-buffer): then it goes element by element. Same results, only slower,
and only for a handful of threads.

`gelu_backward_kernel1`, below it in the file, is the same shape with two inputs (`inp` and `dout`)
and `gelu_grad`, notebook 05's derivative.

## The launcher
'''),
code(r'''
show(os.path.join(CUDA_DIR, "gelu.py"), "def gelu_forward", "k((blocks")
'''),
md(r'''
- `check` asserts that every array is a C-contiguous CuPy array of the expected dtype: the kernel
  receives raw pointers and would silently read garbage otherwise.
- `kernel(...)` compiles `gelu.cu` once per process and storage dtype (with NVRTC, CUDA's runtime
  compiler, through `cupy.RawModule`) and fetches the kernel by its `extern "C"` name.
- The grid: each block of 256 threads covers 256 × PACK elements, so `blocks(n, 256 * PACK)` =
  ⌈n / (256·PACK)⌉ blocks.
- `np.int64(out.size)`: CuPy passes scalars by their NumPy type and checks nothing against the C
  signature, so `long long n` must receive an explicit 64-bit integer.

## What the GPU actually runs

NVRTC compiles without a GPU, so this works on any machine with the CUDA toolkit's NVRTC installed
(`pip install -e ".[cuda]"`). The intermediate assembly, PTX, shows the 16-byte packs as `v4`
(4-float vector) loads and stores:
'''),
code(r'''
try:
    from cupy.cuda import nvrtc

    from llmnp.cuda import runtime
    program = nvrtc.createProgram(runtime.source("gelu"), "gelu.cu", [], [])
    nvrtc.compileProgram(program, ["-arch=compute_90", *runtime.compile_options(bf16=False)])
    ptx = nvrtc.getPTX(program).decode()
    nvrtc.destroyProgram(program)
    print(f"{len(ptx.splitlines())} lines of PTX; the kernels' entry points and their 16-byte memory instructions:")
    for line in ptx.splitlines():
        if ".entry" in line or ".v4." in line:
            print("   ", line.strip())
except Exception as e:           # no CuPy, no NVRTC, or no kernel file yet
    print(f"skipped: cannot compile here ({type(e).__name__}: {str(e)[:120]})")
'''),
md(r'''
## Running it: GPU vs NumPy

**These cells need an NVIDIA GPU and CuPy**; without them they print a note and do nothing.

First, correctness: the same input through the kernel and through `llmnp.gelu_forward`. In float32
the two agree to rounding (the GPU's `tanhf` is not NumPy's `tanh`, so not bit for bit).
'''),
code(r'''
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    x = np.random.default_rng(0).normal(size=(4, 64, 3072)).astype(np.float32)
    expected = np.empty_like(x)
    gelu_forward(expected, x)
    x_gpu = cp.asarray(x)
    out_gpu = cp.empty_like(x_gpu)
    cuda.gelu_forward(out_gpu, x_gpu)
    print(f"max |GPU - NumPy| = {float(np.abs(cp.asnumpy(out_gpu) - expected).max()):.2e}")
'''),
md(r'''
Then speed, over sizes from 64 K to 64 M elements. The GPU is timed with CUDA events (kernel
launches return before the kernel finishes). A memory-bound kernel should approach the GPU's memory
bandwidth: each element is 4 bytes read and 4 written.
'''),
code(r'''
def time_cpu(fn, reps):
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def time_gpu(fn, reps):
    fn()
    begin, end = cp.cuda.Event(), cp.cuda.Event()
    begin.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(begin, end) / 1e3 / reps


if not GPU:
    print("skipped: no GPU here")
else:
    sizes = [2**k for k in range(16, 27, 2)]
    rows = []
    for n in sizes:
        x = np.random.default_rng(0).normal(size=n).astype(np.float32)
        out = np.empty_like(x)
        x_gpu, out_gpu = cp.asarray(x), cp.empty(n, dtype=np.float32)
        t_cpu = time_cpu(lambda: gelu_forward(out, x), reps=3 if n > 2**22 else 20)
        t_gpu = time_gpu(lambda: cuda.gelu_forward(out_gpu, x_gpu), reps=50)
        rows.append((n, t_cpu, t_gpu))
        print(f"n = {n:>11,}   NumPy {t_cpu * 1e3:9.3f} ms   GPU {t_gpu * 1e3:8.4f} ms   "
              f"x{t_cpu / t_gpu:7.0f}   GPU {8 * n / t_gpu / 1e9:7.0f} GB/s")

    n, t_cpu, t_gpu = map(np.array, zip(*rows))
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.loglog(n, t_cpu * 1e3, "o-", label="NumPy (this machine's CPU)")
    ax.loglog(n, t_gpu * 1e3, "o-", label=f"CUDA kernel ({cp.cuda.runtime.getDeviceProperties(0)['name'].decode()})")
    ax.set_xlabel("elements")
    ax.set_ylabel("ms per GELU forward")
    ax.legend()
    plt.tight_layout()
    plt.show()
'''),
md(r'''
For small arrays the GPU's time is flat: launching a kernel from Python costs around ten
microseconds whatever the kernel does, so tiny kernels are all overhead (one reason GPU trainers fuse
layers). For large ones the time grows with n, at close to the memory bandwidth (about 3 TB/s on an
H100; arrays that fit in its 50 MB L2 cache can go faster).

## The whole model on both devices

`GPT2(config, device="cuda")` runs the same `model.py` with the `llmnp.cuda` functions. In float32
the two devices compute the same loss and gradients to rounding; the time per training step is
another matter.
'''),
code(r'''
if not GPU:
    print("skipped: no GPU here")
else:
    config = GPT2Config.preset("d4", max_seq_len=128)            # 4 layers, C = 256, GPT-2's vocabulary
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(4, 129))
    x, y = tokens[:, :-1], tokens[:, 1:]
    results = {}
    for device in ("cpu", "cuda"):
        model = GPT2(config, device=device, dtype=np.float32, seed=0)

        def step():
            loss = model.forward(x, y)
            model.zero_grad()
            model.backward()
            return loss

        loss = float(step())
        timer = time_cpu if device == "cpu" else time_gpu
        seconds = timer(step, reps=2 if device == "cpu" else 20)
        grads = model.grads_memory if device == "cpu" else cp.asnumpy(model.grads_memory)
        results[device] = (loss, grads, seconds)
        print(f"{device:>4}: loss {loss:.6f}   forward + backward {seconds * 1e3:8.2f} ms")
    print(f"loss difference {abs(results['cpu'][0] - results['cuda'][0]):.1e}, "
          f"largest gradient difference {np.abs(results['cpu'][1] - results['cuda'][1]).max():.1e}")
'''),
md(r'''
Every kernel in [llmnp/cuda/](../llmnp/cuda/) follows the pattern read here, with more going on
between the load and the store: layernorm and the classifier reduce a row across a warp or a block
of threads (`warp_sum`, `block_sum` in `common.cuh`), attention walks over tiles of keys, AdamW runs
over the flat buffers of notebook 00. Each is tested against its NumPy function, the reference the earlier notebooks derived.

Next: [11 data parallel](11_data_parallel.ipynb), more than one GPU.
'''),
]


# ---------------------------------------------------------------------------- 11 data parallel
NOTEBOOKS["11_data_parallel"] = [
md(r'''
# 11 · Data parallelism: all-reduce and ZeRO-1

With N GPUs, the simplest way to train faster is **data parallelism**: every GPU (a *worker*) holds
a full copy of the model, takes its own 1/N of each batch, and runs forward and backward on it. Then
the workers **average their gradients**, so that all of them take the same AdamW step and the copies
stay identical. Only the averaging needs communication.

This notebook simulates N workers with NumPy in one process: the same arithmetic as
[llmnp/distributed.py](../llmnp/distributed.py) does over MPI or NCCL, with the messages made visible.
'''),
code(r'''
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.params import num_parameters

rng = np.random.default_rng(0)
config = GPT2Config.tiny(vocab_size=50)
N = 4                                                   # workers
B, T = 8, 8                                             # the whole batch; each worker gets B / N rows
tokens = rng.integers(0, config.vocab_size, size=(B, T + 1))
x, y = tokens[:, :-1], tokens[:, 1:]
'''),
md(r'''
## Averaged gradients are the full batch's gradients

The loss is a mean over the B·T positions. Split the batch in N equal parts: the full mean is the
average of the N parts' means, and since a gradient is linear, the full batch's gradient is the
average of the N workers' gradients. Checked, with N models built from the same seed (identical
copies) and one reference model that sees the whole batch:
'''),
code(r'''
def forward_backward(model, rows):
    model.forward(x[rows], y[rows])
    model.zero_grad()
    model.backward()


reference = GPT2(config, dtype=np.float64, seed=0)
forward_backward(reference, slice(None))                 # the whole batch

workers = [GPT2(config, dtype=np.float64, seed=0) for _ in range(N)]
parts = [slice(r * B // N, (r + 1) * B // N) for r in range(N)]   # worker r's rows of the batch
for worker, rows in zip(workers, parts):
    forward_backward(worker, rows)

average = sum(w.grads_memory for w in workers) / N
print(f"{reference.num_parameters} parameters")
print(f"max |average of the workers' gradients - full-batch gradient| = {np.abs(average - reference.grads_memory).max():.1e}")
print(f"while the workers' own gradients differ by up to {np.abs(workers[0].grads_memory - reference.grads_memory).max():.1e}")
'''),
md(r'''
## All-reduce, by hand

"Every worker ends up with the sum of everyone's buffers" is an **all-reduce**. The obvious way,
everyone sends to worker 0 which adds up and sends the result back, makes worker 0 receive and send
N − 1 whole buffers: it becomes the bottleneck as N grows. The **ring all-reduce** (one of the
algorithms NCCL chooses from) keeps every link equally busy. Arrange the workers in a ring and cut each buffer
into N chunks:

1. **Reduce-scatter**, N − 1 steps: at step s, worker r sends its chunk (r − s) mod N to worker r + 1,
   which adds it to its own copy of that chunk. Each chunk travels around the ring collecting one
   more worker's contribution per step; after N − 1 steps worker r holds the complete sum of chunk
   (r + 1) mod N.
2. **All-gather**, N − 1 steps: the complete chunks travel around the ring once more, each worker
   overwriting its stale copy.

With three workers holding 1 2 3, 10 20 30 and 100 200 300, the sums should be 111 222 333:
'''),
code(r'''
def ring_allreduce(buffers, verbose=False):
    """Sum of the workers' buffers, delivered to every worker; also returns the bytes each sent."""
    N = len(buffers)
    chunks = [np.array_split(b.copy(), N) for b in buffers]     # chunks[r][c]: worker r's copy of chunk c
    sent = 0

    def show(title):
        if verbose:
            print(f"{title:<26}" + " | ".join(" ".join(f"{int(v):4d}" for v in np.concatenate(c)) for c in chunks))

    show("start")
    for s in range(N - 1):                                       # 1. reduce-scatter
        messages = [(r, (r - s) % N, chunks[r][(r - s) % N].copy()) for r in range(N)]   # all send at once
        for r, c, data in messages:
            chunks[(r + 1) % N][c] += data
            sent += data.nbytes
        show(f"reduce-scatter step {s + 1}")
    for s in range(N - 1):                                       # 2. all-gather
        messages = [(r, (r + 1 - s) % N, chunks[r][(r + 1 - s) % N].copy()) for r in range(N)]
        for r, c, data in messages:
            chunks[(r + 1) % N][c][...] = data
            sent += data.nbytes
        show(f"all-gather step {s + 1}")
    return [np.concatenate(c) for c in chunks], sent // N


print(" " * 26 + "worker 0       | worker 1       | worker 2")
_ = ring_allreduce([np.array([1, 2, 3]), np.array([10, 20, 30]), np.array([100, 200, 300])], verbose=True)
'''),
md(r'''
Follow chunk 0 (the first column of each worker): worker 0's 1 goes to worker 1 (11), then to
worker 2 (111), complete; the all-gather then carries 111 to worker 0 and worker 1.

Now on the real gradients. Each worker sent $2(N-1)$ chunks of $1/N$ of the buffer:
$2(N-1)/N$ buffers in all, under 2 whatever N is.
'''),
code(r'''
results, sent = ring_allreduce([w.grads_memory for w in workers])
print("every worker got the sum:", all(np.allclose(res, N * average) for res in results))
nbytes = workers[0].grads_memory.nbytes
print(f"buffer {nbytes:,} bytes; each worker sent {sent:,} = {sent / nbytes:.2f} buffers (2(N-1)/N = {2 * (N - 1) / N:.2f})")
'''),
code(r'''
counts = np.arange(2, 65)
fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.plot(counts, counts - 1, label="through worker 0: what it receives (and sends again)")
ax.plot(counts, 2 * (counts - 1) / counts, label="ring: what each worker receives (and sends)")
ax.set_xlabel("workers N")
ax.set_ylabel("gradient buffers per step")
ax.set_yscale("log")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
'''),
md(r'''
For GPT-2 small in bf16 a gradient buffer is about 250 MB, so each step moves about 2 × 250 MB per
GPU whatever N, which NVLink (hundreds of GB/s) handles in a few milliseconds, well hidden behind
the second-long forward and backward of a big batch.

## ZeRO-1: split the optimizer state

After the all-reduce, all N workers run the *same* AdamW update on the *same* numbers: N copies of
the optimizer state (m and v, and in bf16 training the fp32 master weights) doing N copies of the
same work. ZeRO stage 1 gives each worker one 1/N slice of the flat buffer to own instead:

1. **reduce-scatter** the gradients (the first half of the ring above): worker r gets the sum of its
   own slice only;
2. each worker runs AdamW on **its slice**, keeping m and v for that slice only;
3. **all-gather** the updated parameters (the second half of the ring): everyone has the full model
   again.

The same traffic as one all-reduce, and the optimizer's memory and work divided by N. Memory per GPU
for GPT-2 small trained in bf16 as llm.c does it (bf16 parameters and gradients, 2 bytes each; fp32
m, v and master weights, 4 bytes each):
'''),
code(r'''
n = num_parameters(GPT2Config.preset("d12"))
print(f"{'GPUs':>5} {'without ZeRO':>14} {'ZeRO-1':>10}   (GiB per GPU, parameters + gradients + optimizer state)")
for gpus in (1, 2, 4, 8):
    plain = n * (2 + 2 + 12) / 2**30
    zero1 = n * (2 + 2 + 12 / gpus) / 2**30
    print(f"{gpus:>5} {plain:>14.2f} {zero1:>10.2f}")
'''),
md(r'''
Simulated below for two steps. `GPT2.update(..., shard=(start, end))` updates only that slice of
the flat buffer, each tensor in it with its own weight decay, and keeps m and v of the slice's size.
The reference model takes the ordinary full update on the full batch's gradient; after each step
every worker's parameters must equal the reference's.
'''),
code(r'''
hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
size = reference.num_parameters // N
shards = [(r * size, (r + 1) * size) for r in range(N)]          # worker r owns [r*size, (r+1)*size)

for t in (1, 2):
    if t > 1:                                                    # a new batch: forward and backward again
        tokens = rng.integers(0, config.vocab_size, size=(B, T + 1))
        x, y = tokens[:, :-1], tokens[:, 1:]
        forward_backward(reference, slice(None))
        for worker, rows in zip(workers, parts):
            forward_backward(worker, rows)
    reference.update(t=t, **hyper)

    # 1. reduce-scatter: worker r needs the average gradient of its own slice only
    for r, (start, end) in enumerate(shards):
        workers[r].grads_memory[start:end] = sum(w.grads_memory[start:end] for w in workers) / N
    # 2. AdamW on the owned slice
    for w, shard in zip(workers, shards):
        w.update(t=t, shard=shard, **hyper)
    # 3. all-gather: every worker copies every slice from its owner
    for start, end in shards:
        owner = workers[start // size].params_memory[start:end].copy()
        for w in workers:
            w.params_memory[start:end] = owner

    diff = max(np.abs(w.params_memory - reference.params_memory).max() for w in workers)
    print(f"step {t}: max |worker - reference| = {diff:.1e}; each worker's m holds {workers[0].m_memory.size} "
          f"numbers, the reference's {reference.m_memory.size}")
'''),
md(r'''
(The gradient clipping norm needs one more number from every worker: each computes the sum of
squares of its slice, and those N numbers are summed, `Distributed.grad_norm`.)

## The real thing

[llmnp/distributed.py](../llmnp/distributed.py) runs one process per GPU (or several on a CPU),
started by MPI: `mpiexec -n 4 python train_gpt2.py ... -z 1`. On GPUs the all-reduce, reduce-scatter
and all-gather are NCCL's, on the device buffers; on the CPU they are MPI's, on the NumPy buffers.
Each process reads its own B × T slice of every batch (llm.c's data loader does the split), so the
N processes together train on N times the tokens per step.

That is the last notebook: back to [00 overview](00_overview.ipynb) for the map.
'''),
]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
