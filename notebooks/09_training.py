# %% [markdown]
# # 09 · Training a small GPT-2 on Shakespeare
#
# Everything so far, in one loop: forward (notebooks 01–07), backward (the same, in reverse), gradient
# clipping and AdamW (08), with a learning-rate schedule. The model is tiny and trains on this CPU in a
# few seconds; `train_gpt2.py` runs the same loop, with llm.c's flags and logs, on GPT-2 sized models.
#
# The text is the Shakespeare that ships with the repository (`data/shakespeare.txt`, public domain).

# %%
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

# %% [markdown]
# ## Tokens
#
# GPT-2 reads text as byte-pair-encoded tokens: frequent words are one token, rare ones split into
# pieces, 50257 tokens in all.

# %%
line = "To be, or not to be, that is the question:"
ids = encode(line)
print(ids)
print([decode([i]) for i in ids])

# %% [markdown]
# With a vocabulary that large, a tiny model would be almost all classifier: `wte` alone would hold
# 50304 × C parameters, and the (B, T, Vp) logits would dominate every step. For a model that learns
# something visible in seconds, this notebook uses **characters** as tokens instead: the vocabulary is
# the set of characters in the text. The model and the training code do not change at all; only V does.

# %%
chars = sorted(set(text))
V = len(chars)
stoi = {c: i for i, c in enumerate(chars)}
data = np.array([stoi[c] for c in text], dtype=np.int32)
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]          # the last 10% is held out
print(f"V = {V} characters:", repr("".join(chars)))


def to_text(ids):
    return "".join(chars[i] for i in ids)


# %% [markdown]
# ## The model and the batches
#
# Two layers of 64 channels, 4 heads, 64 characters of context. A batch is B windows of T + 1
# characters at random places in the text: inputs are the first T, targets the same shifted by one, so
# every position is a next-character prediction.

# %%
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


# %% [markdown]
# ## Sampling
#
# To generate, run the model on the text so far, take the logits at the last position (the prediction
# of the next character), turn them into probabilities with a softmax, draw a character, append, repeat.
# The context is cut to the last T characters, the most the position table `wpe` covers.

# %%
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

# %% [markdown]
# ## The training loop
#
# Per step: a batch, forward (the loss), `zero_grad`, backward (gradients), the gradient norm and the
# clipping scale, one AdamW step. The learning rate warms up linearly for the first 10% of the steps
# (AdamW's first steps rest on poor estimates of $v$), then decays along a cosine to a tenth of its
# peak (notebook 08: with a smaller lr, the model settles closer to a minimum).

# %%
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

# %%
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

# %% [markdown]
# ## Samples, before and after
#
# Same prompt, same random draws. Before training: characters drawn almost uniformly. After a few
# seconds: the shape of a play, speaker names in capitals on a line of their own, line breaks, short
# words, spaces in sensible places. Real English takes a bigger model and thousands of steps; the
# validation loss staying close to the training loss says the model learned the text's patterns rather
# than memorizing its batches.

# %%
print("---- before training ----")
print(before)
print("\n---- after", steps, "steps ----")
print(sample("ROMEO:\n"))

# %% [markdown]
# ## The same at GPT-2 scale
#
# `train_gpt2.py` is this loop with llm.c's data loader (token shards of GPT-2 tokens), flags,
# checkpoints and logging, and `--device cuda` swaps every layer function for its CUDA kernel
# ([notebook 10](10_cuda.ipynb)); with several GPUs, each takes a part of the batch
# ([notebook 11](11_data_parallel.ipynb)). For instance, on the shipped Shakespeare with a 6-layer
# model: `python train_gpt2.py -e d6 -b 4 -t 64 -x 20`.
