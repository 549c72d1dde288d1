# %% [markdown]
# # 12 · Capstone: the whole GPT-2, forward and backward, from the layers
#
# Notebooks 01–07 derived one layer each, forward and backward, and checked it. This notebook puts
# them together: the whole GPT-2 forward pass in about forty lines, the whole backward pass in about
# thirty, each a plain sequence of the layer functions, and then the loss and **all sixteen
# parameter gradients** checked against `llmnp.GPT2`. After that, the two fused operations the model
# runs instead of some of those calls are derived and checked, and `GPT2.forward` / `GPT2.backward`
# are printed, each line labelled with the notebook that derives it.
#
# Everything runs in float64 on a tiny model (2 layers, 2 heads, 8 channels), so that any
# disagreement is a bug and not rounding.

# %%
import inspect

import numpy as np

from llmnp import GPT2, GPT2Config
from llmnp.attention import attention_backward, attention_forward
from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward
from llmnp.encoder import encoder_backward, encoder_forward
from llmnp.exercises import check_backward
from llmnp.gelu import gelu_backward, gelu_forward
from llmnp.layernorm import layernorm_backward, layernorm_forward, residual_layernorm_forward
from llmnp.matmul import matmul_backward, matmul_forward, matmul_gelu_forward
from llmnp.residual import residual_backward, residual_forward

config = GPT2Config.tiny(vocab_size=50)        # L=2, NH=2, C=8, V=50 padded to Vp=64, maxT=16
model = GPT2(config, dtype=np.float64, seed=0)
rng = np.random.default_rng(0)
B, T = 3, 7
tokens = rng.integers(0, config.vocab_size, size=(B, T + 1)).astype(np.int32)
inputs, targets = tokens[:, :-1], tokens[:, 1:]
p = model.params                               # the 16 parameter tensors: views of one flat buffer
print(config)
print({name: w.shape for name, w in p.items()})


# %% [markdown]
# ## Forward: 01 → 02 → 03 → 04 → 03 + 06 → 02 → 03 → 05 → 03 + 06, L times, then 02 → 03 → 07
#
# One call per line, in the order of notebook 00's listing. Each layer writes into arrays made just
# before it (the layer functions allocate nothing). Every block keeps what its backward will need in
# a dictionary of its own: the layer inputs, the layernorm statistics, attention's log-sum-exp.

# %%
def gpt2_forward(p, config, inputs, targets):
    """The mean loss and the activations backward needs, from the 16 parameters p and (B,T) tokens."""
    B, T = inputs.shape
    C, NH, Vp, V = config.channels, config.num_heads, config.padded_vocab_size, config.vocab_size
    new = lambda *shape: np.zeros((B, T) + shape)                       # noqa: E731
    x = new(C)
    encoder_forward(x, inputs, p["wte"], p["wpe"])                      # 01: x = wte[inputs] + wpe[:T]
    blocks = []
    for l in range(config.num_layers):
        a = dict(x=x, ln1=new(C), ln1_mean=new(), ln1_rstd=new(), qkv=new(3 * C), atty=new(C),
                 att_lse=np.zeros((B, NH, T)), attproj=new(C), x2=new(C), ln2=new(C), ln2_mean=new(),
                 ln2_rstd=new(), fch=new(4 * C), fch_gelu=new(4 * C), fcproj=new(C), x3=new(C))
        layernorm_forward(a["ln1"], a["ln1_mean"], a["ln1_rstd"], x, p["ln1w"][l], p["ln1b"][l])   # 02
        matmul_forward(a["qkv"], a["ln1"], p["qkvw"][l], p["qkvb"][l])                          # 03
        attention_forward(a["atty"], a["att_lse"], a["qkv"])                                     # 04
        matmul_forward(a["attproj"], a["atty"], p["attprojw"][l], p["attprojb"][l])              # 03
        residual_forward(a["x2"], x, a["attproj"])                                               # 06
        layernorm_forward(a["ln2"], a["ln2_mean"], a["ln2_rstd"], a["x2"], p["ln2w"][l], p["ln2b"][l])  # 02
        matmul_forward(a["fch"], a["ln2"], p["fcw"][l], p["fcb"][l])                             # 03
        gelu_forward(a["fch_gelu"], a["fch"])                                                    # 05
        matmul_forward(a["fcproj"], a["fch_gelu"], p["fcprojw"][l], p["fcprojb"][l])             # 03
        residual_forward(a["x3"], a["x2"], a["fcproj"])                                          # 06
        blocks.append(a)
        x = a["x3"]
    top = dict(x=x, lnf=new(C), lnf_mean=new(), lnf_rstd=new(), logits=new(Vp), losses=new(), lse=new())
    layernorm_forward(top["lnf"], top["lnf_mean"], top["lnf_rstd"], x, p["lnfw"], p["lnfb"])   # 02
    matmul_forward(top["logits"], top["lnf"], p["wte"], None)                                 # 03, tied wte
    crossentropy_forward(top["losses"], top["lse"], top["logits"], targets, V)                # 07
    return top["losses"].mean(), blocks, top


loss, blocks, top = gpt2_forward(p, config, inputs, targets)
model_loss = float(model.forward(inputs, targets))
print(f"from the layers: {loss:.12f}\nllmnp.GPT2:      {model_loss:.12f}\nln V:            {np.log(config.vocab_size):.12f}")
assert abs(loss - model_loss) < 1e-12


# %% [markdown]
# ## Backward: the same list, read from the bottom up
#
# Each forward line has its backward line, in reverse order. Two rules from notebook 00 carry it:
# parameter gradients **add** into `g` (and `wte`, read by the encoder and by the classifier, collects
# both), and the residual stream's gradient `dx` is handed from block to block, each residual add
# passing it unchanged to both of its inputs (notebook 06), each layernorm adding its share into it.

# %%
def gpt2_backward(p, config, inputs, targets, blocks, top):
    """The 16 parameter gradients of the mean loss, same names and shapes as p."""
    B, T = inputs.shape
    C, V = config.channels, config.vocab_size
    new = lambda *shape: np.zeros((B, T) + shape)                       # noqa: E731
    g = {name: np.zeros_like(w) for name, w in p.items()}
    dlogits, dlnf, dx = new(config.padded_vocab_size), new(C), new(C)
    crossentropy_softmax_backward(dlogits, top["logits"], top["lse"], targets, 1 / (B * T), V)      # 07
    matmul_backward(dlnf, g["wte"], None, dlogits, top["lnf"], p["wte"])                          # 03
    layernorm_backward(dx, g["lnfw"], g["lnfb"], dlnf, top["x"], p["lnfw"], top["lnf_mean"], top["lnf_rstd"])  # 02
    for l in reversed(range(config.num_layers)):
        a = blocks[l]
        dx2, dfcproj = new(C), new(C)
        residual_backward(dx2, dfcproj, dx)                                                       # 06
        dfch_gelu, dfch, dln2 = new(4 * C), new(4 * C), new(C)
        matmul_backward(dfch_gelu, g["fcprojw"][l], g["fcprojb"][l], dfcproj, a["fch_gelu"], p["fcprojw"][l])  # 03
        gelu_backward(dfch, a["fch"], dfch_gelu)                                                  # 05
        matmul_backward(dln2, g["fcw"][l], g["fcb"][l], dfch, a["ln2"], p["fcw"][l])               # 03
        layernorm_backward(dx2, g["ln2w"][l], g["ln2b"][l], dln2, a["x2"], p["ln2w"][l], a["ln2_mean"], a["ln2_rstd"])  # 02
        dx, dattproj = new(C), new(C)
        residual_backward(dx, dattproj, dx2)                                                      # 06
        datty, dqkv, dln1 = new(C), new(3 * C), new(C)
        matmul_backward(datty, g["attprojw"][l], g["attprojb"][l], dattproj, a["atty"], p["attprojw"][l])  # 03
        attention_backward(dqkv, datty, a["qkv"], a["atty"], a["att_lse"])                        # 04
        matmul_backward(dln1, g["qkvw"][l], g["qkvb"][l], dqkv, a["ln1"], p["qkvw"][l])            # 03
        layernorm_backward(dx, g["ln1w"][l], g["ln1b"][l], dln1, a["x"], p["ln1w"][l], a["ln1_mean"], a["ln1_rstd"])  # 02
    encoder_backward(g["wte"], g["wpe"], dx, inputs)                                              # 01
    return g


grads = gpt2_backward(p, config, inputs, targets, blocks, top)
model.zero_grad()
model.backward()

print(f"{'tensor':>9} {'shape':>12} {'|grad|':>10} {'max |ours - GPT2|':>18}")
worst = 0.0
for name, w in p.items():
    diff = np.abs(grads[name] - model.grads[name]).max()
    worst = max(worst, diff)
    print(f"{name:>9} {str(w.shape):>12} {np.linalg.norm(grads[name]):10.5f} {diff:18.1e}")
print(f"all 16 gradients agree to {worst:.1e}")
assert worst < 1e-12


# %% [markdown]
# The model's gradients and ours agree to the last bits of float64, which says the model runs the same
# arithmetic; notebook 00's finite-difference check on `GPT2` says that arithmetic is the right
# derivative. One more, directly on the two functions above: the loss along a random direction of
# all the parameters at once against the gradient along it.

# %%
flat = model.params_memory                       # p's views look into it
direction = rng.normal(size=flat.size)
g_flat = np.concatenate([grads[name].ravel() for name in p])   # the table's order is the buffer's
saved, eps = flat.copy(), 1e-6
flat += eps * direction
up = gpt2_forward(p, config, inputs, targets)[0]
flat[...] = saved - eps * direction
down = gpt2_forward(p, config, inputs, targets)[0]
flat[...] = saved
numeric, analytic = (up - down) / (2 * eps), float(g_flat @ direction)
print(f"numeric {numeric:.10f}   analytic {analytic:.10f}   relative error {abs(numeric - analytic) / abs(analytic):.1e}")
assert abs(numeric - analytic) < 1e-7 * abs(analytic)


# %% [markdown]
# ## The two fused operations
#
# `GPT2.forward` makes the same calls but for two merges (notebook 00 sets them side by side): each
# replaces two or three passes over a (B, T, C) or (B, T, 4C) tensor by one, which is what a GPU's
# time goes to for these cheap elementwise steps.
#
# **`residual_layernorm_forward`**: the projection's bias, the residual add and the next layernorm.
# $$r = x + (\text{proj} + b_{\text{proj}}), \qquad \text{out} = \text{layernorm}(r; w, b)$$
# Its backward needs nothing new. The chain rule through $r$: $\partial r / \partial x = 1$,
# $\partial r / \partial \text{proj} = 1$, $\partial r / \partial b_{\text{proj}} = 1$ summed over the
# (B, T) positions. So with $dr$ = the layernorm's `dinp` (notebook 02) plus whatever the stream
# already carries from above, $dx = dr$, $d\text{proj} = dr$, $db_{\text{proj}} = \sum_{b,t} dr$. The
# model never forms $d\text{proj}$ on its own: its `dresidual` buffer *is* $dr$, the projection's
# `matmul_backward` reads it as its `dout` and sums the bias gradient from it (notebook 03), and the
# stream keeps it for the layers below.
#
# The check: the fused forward against the plain composition, and its backward, written from the
# parts, against finite differences (`check_backward`, the exercises' checker).

# %%
C = config.channels
x, proj = rng.normal(size=(B, T, C)), rng.normal(size=(B, T, C))
bproj, w, b = rng.normal(size=C), 1 + 0.1 * rng.normal(size=C), 0.1 * rng.normal(size=C)

residual, out, mean, rstd = np.zeros((B, T, C)), np.zeros((B, T, C)), np.zeros((B, T)), np.zeros((B, T))
residual_layernorm_forward(residual, out, mean, rstd, x, proj, bproj, w, b)
plain_r = np.zeros((B, T, C))
residual_forward(plain_r, x, proj + bproj)
plain_out = np.zeros((B, T, C))
layernorm_forward(plain_out, np.zeros((B, T)), np.zeros((B, T)), plain_r, w, b)
print("fused forward = plain composition:", np.allclose(residual, plain_r), np.allclose(out, plain_out))


def residual_layernorm(x, proj, bproj, w, b):
    """The fused forward as a function of its inputs, for the checker: the layernorm output."""
    outs = [np.zeros((B, T, C)), np.zeros((B, T, C)), np.zeros((B, T)), np.zeros((B, T))]
    residual_layernorm_forward(*outs, x, proj, bproj, w, b)
    return outs[1]


def residual_layernorm_backward(dout, x, proj, bproj, w, b):
    """Its backward from the parts: the layernorm's, then dr handed to x, proj and (summed) bproj."""
    r = x + proj + bproj
    mean, rstd = r.mean(-1), 1 / np.sqrt(r.var(-1) + 1e-5)
    dr, dw, db = np.zeros_like(r), np.zeros(C), np.zeros(C)
    layernorm_backward(dr, dw, db, dout, r, w, mean, rstd)           # 02
    return dr, dr, dr.sum(axis=(0, 1)), dw, db                      # d x, d proj, d bproj, d w, d b


check_backward(residual_layernorm, residual_layernorm_backward,
               dict(x=x, proj=proj, bproj=bproj, w=w, b=b), ("x", "proj", "bproj", "w", "b"));


# %% [markdown]
# **`matmul_gelu_forward` / `matmul_backward(..., pre_gelu)`**: the fc product, its bias and GELU in one
# call, $f = h W_{fc}^T + b_{fc}$ kept as `pre_gelu` (the model's `fch`) and $g = \text{gelu}(f)$; and
# the backward of the layer that reads $g$ (fcproj) taking its input gradient on through GELU:
# $df = (dy\, W_{proj}) \cdot \text{gelu}'(f)$ (notebooks 03 and 05). On the GPU both are one cuBLASLt
# product whose epilogue does the rest on the way out of the tensor cores. Checked three ways: the
# forward against `matmul_forward` then `gelu_forward`, the backward against `matmul_backward` then
# `gelu_backward`, and the pair against finite differences.

# %%
OC = 4 * C
h, wfc, bfc, wproj = (rng.normal(size=(B, T, C)), rng.normal(size=(OC, C)), rng.normal(size=OC),
                      rng.normal(size=(C, OC)))
g, f = np.zeros((B, T, OC)), np.zeros((B, T, OC))
matmul_gelu_forward(g, f, h, wfc, bfc)
f_plain, g_plain = np.zeros((B, T, OC)), np.zeros((B, T, OC))
matmul_forward(f_plain, h, wfc, bfc)
gelu_forward(g_plain, f_plain)
print("forward: pre_gelu = h wfc^T + bfc:", np.allclose(f, f_plain), "  out = gelu(pre_gelu):", np.allclose(g, g_plain))

dy = rng.normal(size=(B, T, C))
df, dwproj = np.zeros((B, T, OC)), np.zeros((C, OC))
matmul_backward(df, dwproj, None, dy, g, wproj, f)
dg, df_plain = np.zeros((B, T, OC)), np.zeros((B, T, OC))
matmul_backward(dg, np.zeros((C, OC)), None, dy, g, wproj)
gelu_backward(df_plain, f, dg)
print("backward: df = gelu'(pre_gelu) (dy wproj):", np.allclose(df, df_plain))


def fc_gelu_proj(h, wfc, bfc):                   # fcproj(gelu(fc(h))), fcproj without its bias
    g, f, y = np.zeros((B, T, OC)), np.zeros((B, T, OC)), np.zeros((B, T, C))
    matmul_gelu_forward(g, f, h, wfc, bfc)
    matmul_forward(y, g, wproj, None)
    return y


def fc_gelu_proj_grads(dy, h, wfc, bfc):
    g, f = np.zeros((B, T, OC)), np.zeros((B, T, OC))
    matmul_gelu_forward(g, f, h, wfc, bfc)
    df = np.zeros((B, T, OC))
    matmul_backward(df, np.zeros((C, OC)), None, dy, g, wproj, f)
    dh, dwfc, dbfc = np.zeros(h.shape), np.zeros(wfc.shape), np.zeros(bfc.shape)
    matmul_backward(dh, dwfc, dbfc, df, h, wfc)
    return dh, dwfc, dbfc


check_backward(fc_gelu_proj, fc_gelu_proj_grads, dict(h=h, wfc=wfc, bfc=bfc), ("h", "wfc", "bfc"));


# %% [markdown]
# ## `GPT2.forward` and `GPT2.backward`, line by line
#
# The model's own code, [llmnp/model.py](../llmnp/model.py), printed from the module, with the
# notebook that derives each layer call in the left column. Lines without a label are bookkeeping:
# buffers, names, the loop. Compared with the functions above: the model keeps every activation in one
# preallocated table (notebook 00) instead of a dictionary per block, uses the two fused calls, and
# makes the same calls through `ops`, which is `llmnp.layers` on the CPU and `llmnp.cuda` on the GPU
# (notebook 10).

# %%
WHERE = [  # (text in the line, the notebook that derives it); the first match labels the line
    ("residual_layernorm_forward", "06+02 fused, here"), ("matmul_gelu", "03+05 fused, here"),
    ("encoder_", "01 encoder"), ("layernorm_", "02 layernorm"), ("matmul_", "03 matmul"),
    ("attention_", "04 attention"), ("crossentropy", "07 classifier"), ("dloss = ", "07 classifier"),
    ('d["dresidual"].fill(0)', "06 residual"), ("for l in", "00 overview"), ("residual = a[", "06 residual"),
]


def show_annotated(method):
    """A method's source with a label column naming the notebook that derives each line."""
    for line in inspect.getsource(method).splitlines():
        label = next((who for what, who in WHERE if what in line), "")
        print(f"{label:>18} | {line[4:]}")


show_annotated(GPT2.forward)

# %%
show_annotated(GPT2.backward)

# %% [markdown]
# That is all of it. Training (notebook 09) repeats forward, `zero_grad`, backward and the AdamW update
# of notebook 08; the GPU runs these same two methods with kernels in place of the NumPy layers
# (notebook 10), and several GPUs add an all-reduce of the gradients between backward and update
# (notebook 11).
