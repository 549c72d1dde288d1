# %% [markdown]
# # 08 · AdamW: from gradients to a step
#
# Backward gives $g = \partial L/\partial\theta$ for all parameters. Plain gradient descent steps
# $\theta \leftarrow \theta - \text{lr}\cdot g$, which moves every parameter in proportion to its own
# gradient: parameters with tiny gradients barely move, those with large ones may overshoot. AdamW,
# what GPT-2 and llm.c train with, keeps two running averages per parameter and divides one by the
# other. At step $t = 1, 2, \dots$:
# $$m \leftarrow \beta_1 m + (1-\beta_1)\, g \qquad\qquad v \leftarrow \beta_2 v + (1-\beta_2)\, g^2$$
# $$\hat m = \frac{m}{1-\beta_1^t} \qquad\qquad \hat v = \frac{v}{1-\beta_2^t}$$
# $$\theta \leftarrow \theta - \text{lr}\left(\frac{\hat m}{\sqrt{\hat v} + \epsilon} + \lambda\,\theta\right)$$
#
# - $m$, the **momentum**, is a running mean of the gradient: noise between batches averages out.
# - $v$ is a running mean of the squared gradient; $\sqrt{\hat v}$ is the gradient's typical size, so
#   $\hat m/\sqrt{\hat v}$ is about ±1 for a parameter whose gradient keeps its sign, whatever its
#   scale: **every parameter moves about lr per step**.
# - $\hat m, \hat v$ correct a bias: $m$ and $v$ start at 0, so early averages are too small.
# - $\lambda\theta$ is **weight decay**, pulling weights towards 0, *decoupled*: applied to $\theta$
#   directly, not added to $g$ (where Adam's division would rescale it). That is the W in AdamW.
#
# llm.c's settings for GPT-2: $\beta_1 = 0.9$, $\beta_2 = 0.95$, $\epsilon = 10^{-8}$, and in its
# GPT-2 reproduction runs $\lambda = 0.1$ (the `-c` flag), on the 2-D weight matrices only.
#
# The code: [llmnp/adamw.py](../llmnp/adamw.py); on the GPU: [llmnp/cuda/adamw.cu](../llmnp/cuda/adamw.cu).

# %%
import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.adamw import adamw_update
from llmnp.params import DECAYED_PARAMETERS

rng = np.random.default_rng(0)


# %% [markdown]
# ## From scratch
#
# There is no backward here, only the update, so no finite differences either: the check is that
# `llmnp`'s in-place, chunked version computes the same numbers as these five lines.

# %%
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

# %% [markdown]
# ## Every parameter moves about lr
#
# At the first step $\hat m = g$ and $\hat v = g^2$, so the step is $\text{lr}\cdot g/|g| =
# \pm\text{lr}$, for a gradient of $10^{-6}$ as for one of $10^{3}$ ($\epsilon$ shows only in the first: it
# keeps the division safe when a gradient is 0):

# %%
g = np.array([1e-6, -3e-2, 5.0, -1e3])
p0 = np.zeros(4)
p1, _, _ = adamw_scratch(p0, g, np.zeros(4), np.zeros(4), lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, t=1)
for gi, step in zip(g, p1 - p0):
    print(f"gradient {gi:10.0e}   step {step:+.6f}")

# %% [markdown]
# ## Bias correction
#
# With a gradient that is always 1, $m$ should be 1. It starts at 0 and creeps up as $1 - \beta_1^t$;
# dividing by exactly that factor gives the right answer from the first step. ($v$ is slower still:
# $\beta_2 = 0.95$.)

# %%
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


# %% [markdown]
# ## Why divide: a valley with one steep side
#
# Minimize $f(x, y) = \tfrac12(100\,x^2 + y^2)$. Gradient descent must keep lr below $2/100$ or it
# diverges along the steep $x$; with that lr it crawls along the shallow $y$. Adam normalizes each
# coordinate by its own gradient size and moves along both at the same pace (then hovers around the
# minimum at a distance set by lr, which is why training lowers lr towards the end: notebook 09).

# %%
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

# %% [markdown]
# ## On the model: clipping, weight decay, one flat buffer
#
# `GPT2.update(lr, beta1, beta2, eps, weight_decay, t, grad_scale)` runs `adamw_update` over each
# tensor's slice of the flat buffers (notebook 00), with weight decay only on the matrices in
# `DECAYED_PARAMETERS`: biases and layernorm parameters are few, and pulling a layernorm's scale
# towards 0 would fight its purpose.
#
# **Gradient clipping.** A rare bad batch can produce a huge gradient. llm.c computes the norm of the
# whole gradient, $\|g\| = \sqrt{\sum g_i^2}$ over all parameters, and if it exceeds 1 scales every
# gradient by $1/\|g\|$: `grad_scale` multiplies the gradients inside the update. Below, the model's
# update is checked against the scratch function, tensor by tensor:

# %%
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

# %% [markdown]
# The optimizer state is two more copies of the parameters, `m_memory` and `v_memory`, in the same
# flat layout. With many GPUs, that state can be split between them instead of copied
# ([notebook 11](11_data_parallel.ipynb), ZeRO-1).
#
# ## On the GPU
#
# [llmnp/cuda/adamw.cu](../llmnp/cuda/adamw.cu) is one elementwise kernel over the flat buffers: thread
# `i = blockIdx.x * blockDim.x + threadIdx.x` updates parameter `i`, reading its gradient, m and v
# once and writing each once; no thread talks to another. In bf16 training the parameters are stored
# in bf16 and AdamW works on an fp32 **master copy** (`adamw_update_master`): the thread updates
# `master[i]` and writes `params[i]` from it, rounded to bf16. bf16 keeps 8 bits of mantissa, so near
# 1.0 its values are 2^-7 ≈ 0.008 apart, and an AdamW step of lr ≈ 1e-4 is far smaller than that:
# rounded to nearest, `params[i]` would often not move at all. The kernel rounds **stochastically**:
# up with probability (the 16 bits dropped) / 2^16, so on average the bf16 value is the fp32 one. The
# 16 random bits come from a hash of the parameter's position in the flat buffer and a seed of the
# step and tensor (`rounding_bits`), so the rounding is the same on a resumed run. As a loop over
# threads, with the NumPy reference `stochastic_round_bf16` for the rounding:

# %%
import ml_dtypes

from llmnp.adamw import rounding_bits, stochastic_round_bf16


def adamw_master_threads(params, master, g, m, v, lr, beta1, beta2, eps, weight_decay, t, seed, offset=0):
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    for i in range(params.size):                            # i = blockIdx.x * blockDim.x + threadIdx.x
        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        p = np.float32(master[i] - lr * (m[i] / bc1 / (np.sqrt(v[i] / bc2) + eps) + weight_decay * master[i]))
        master[i] = p
        bits = (int(p.view(np.uint32)) + int(rounding_bits(np.array([offset + i], np.uint64), seed)[0])) >> 16
        params[i] = np.uint16(bits & 0xFFFF).view(ml_dtypes.bfloat16)   # the kept 16 bits, carry included


n = 300
master = rng.normal(size=n).astype(np.float32)
g32 = rng.normal(size=n).astype(np.float32)
m32, v32 = np.zeros(n, np.float32), np.zeros(n, np.float32)
params = master.astype(ml_dtypes.bfloat16)
master_ref = master.copy()
adamw_master_threads(params, master, g32, m32, v32, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, seed=7)
adamw_update(master_ref, g32, np.zeros(n, np.float32), np.zeros(n, np.float32), 1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
print("master weights as adamw_update's:", np.allclose(master, master_ref, rtol=1e-6))
print("params = stochastic_round_bf16(master):",
      np.array_equal(params.view(np.uint16), stochastic_round_bf16(master, seed=7).view(np.uint16)))
x = np.full(100_000, 1 + 0.3 * 2**-7, np.float32)                  # 30% of the way to the next bf16 value
print(f"mean of 100,000 roundings of {x[0]:.7f}: {stochastic_round_bf16(x, seed=1).astype(np.float64).mean():.7f}"
      f" (to nearest: {float(x[:1].astype(ml_dtypes.bfloat16)[0]):.7f})")

# %%
from kernels import GPU, compile_kernels, show

show("adamw", "adamw_update_master(", "}")
print()
show("common.cuh", "__device__ __forceinline__ unsigned rounding_bits(", "return x & 0xFFFFu;")
compile_kernels("adamw")

# %%
if not GPU:
    print("skipped: no GPU here (CuPy missing or no CUDA device)")
else:
    import cupy as cp

    from llmnp import cuda

    master_d = cp.asarray(master_ref)
    params_d = master_d.astype(ml_dtypes.bfloat16)
    g_d, m_d, v_d = cp.asarray(g32).astype(ml_dtypes.bfloat16), cp.zeros(n, cp.float32), cp.zeros(n, cp.float32)
    cuda.adamw_update(params_d, g_d, m_d, v_d, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, master=master_d, seed=7)
    same = np.array_equal(params_d.get().view(np.uint16), stochastic_round_bf16(master_d.get(), seed=7).view(np.uint16))
    print("GPU params = stochastic_round_bf16(GPU master):", same)

# %% [markdown]
# Next: [09 training](09_training.ipynb), all of it together.
