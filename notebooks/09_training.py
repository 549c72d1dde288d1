# %% [markdown]
# # 09 · Training a small GPT-2 on Shakespeare
#
# Everything so far, in one loop: forward (notebooks 01–07), backward (the same, in reverse), gradient
# clipping and AdamW (08), with a learning-rate schedule. The model is tiny and trains on a CPU in
# about a minute (the printed times below say how long it took here; a 2-core machine needs 45 to 75
# seconds); `train_gpt2.py` runs the same loop, with llm.c's flags and logs, on GPT-2 sized models.
#
# The text is the Shakespeare that ships with the repository (`data/shakespeare.txt`, public domain).

# %%
import time

import numpy as np
import matplotlib.pyplot as plt

from llmnp import GPT2, GPT2Config
from llmnp.corpus import CORPUS_TEXT
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
# ## The bar to clear: a bigram model
#
# Before training anything, the simplest predictor worth the name: count, in the training text, how
# often each character follows each other one, and predict the next character from the current one
# alone. Its loss on the held-out text is the bar the transformer must clear: anything it learns
# beyond that comes from looking further back than one character, which is what attention is for.

# %%
counts = np.ones((V, V))                                   # add-one: no pair has probability zero
np.add.at(counts, (train_data[:-1], train_data[1:]), 1)
bigram = counts / counts.sum(axis=1, keepdims=True)        # row a: the distribution of what follows a
bigram_loss = float(-np.log(bigram[val_data[:-1], val_data[1:]]).mean())
print(f"bigram: {bigram_loss:.3f} nats per character on the held-out text")


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
steps, lr_max = 400, 1e-2
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
    if step % 100 == 0 or step == steps - 1:
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
ax.axhline(bigram_loss, color="black", ls=":", lw=1.5, label=f"bigram counts ({bigram_loss:.2f})")
ax.set_ylim(1.5, np.log(V) + 0.3)
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per character)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Samples, before and after
#
# Same prompt, same random draws. Before training: characters drawn almost uniformly. After a minute
# of training: the shape of a play, speaker names in capitals on a line of their own, line breaks, short
# words, spaces in sensible places. Real English takes a bigger model and thousands of steps; the
# validation loss staying close to the training loss says the model learned the text's patterns rather
# than memorizing its batches.

# %%
print("---- before training ----")
print(before)
print("\n---- after", steps, "steps ----")
print(sample("ROMEO:\n"))
print(f"\nvalidation loss {val_points[-1][1]:.3f} against the bigram's {bigram_loss:.3f}")

# %% [markdown]
# ## What the heads look at
#
# Each head's attention weights $P$ (notebook 04) for one line of held-out text: row $t$ is where the
# character at $t$ looks to predict the next one, so everything above the diagonal is zero (the
# future). The model keeps only `qkv` and the log-sum-exp, so the maps are recomputed from `qkv` as the
# backward pass does. What to look for in a small character model: heads that look at the previous
# character or two (a band along the diagonal), and heads that look back to the start of the word or to
# the last space or newline.

# %%
window = val_data[1000:1000 + 40]
model.forward(window[None, :])                              # (1, 40): the activations of this text
hs = config.channels // config.num_heads
fig, axes = plt.subplots(config.num_layers, config.num_heads, figsize=(11, 5.8))
for l in range(config.num_layers):
    qkv = model.acts["qkv"][l][0].astype(np.float64)        # (40, 3C) of batch row 0
    for h in range(config.num_heads):
        q = qkv[:, h * hs:(h + 1) * hs]
        k = qkv[:, config.channels + h * hs:config.channels + (h + 1) * hs]
        S = q @ k.T / np.sqrt(hs)
        S[np.triu(np.ones(S.shape, dtype=bool), k=1)] = -np.inf
        P = np.exp(S - S.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        ax = axes[l, h]
        ax.imshow(P, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"layer {l}, head {h}", fontsize=9)
        ax.set_xticks(range(len(window)), [repr(chars[i])[1:-1] for i in window], fontsize=5)
        ax.set_yticks([])
plt.suptitle(repr(to_text(window)), fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The same at GPT-2 scale
#
# `train_gpt2.py` is this loop with llm.c's data loader (token shards of GPT-2 tokens), flags,
# checkpoints and logging, and `--device cuda` swaps every layer function for its CUDA kernel
# ([notebook 10](10_cuda.ipynb)); with several GPUs, each takes a part of the batch
# ([notebook 11](11_data_parallel.ipynb)). For instance, on the shipped Shakespeare with a 6-layer
# model: `python train_gpt2.py -e d6 -b 4 -t 64 -x 20`.
#
# And the same model code, at GPT-2 scale, with OpenAI's trained weights: where llm.c's
# `gpt2_124M.bin` is at hand (in the repository's folder; the README says how to get it), the cell
# below loads it into a `GPT2` and samples a continuation with `llmnp.generate` (the key/value cache of
# `python -m llmnp.generate`). Without the file it says so and does nothing.

# %%
import os

path = next((p for p in ("gpt2_124M.bin", "../gpt2_124M.bin") if os.path.exists(p)), None)
if path is None:
    print("skipped: no gpt2_124M.bin here")
else:
    from llmnp.generate import generate

    gpt2 = GPT2.load(path)
    prompt = "The meaning of life is"
    start = time.perf_counter()
    new = list(generate(gpt2, [50256] + encode(prompt), max_new_tokens=40, seed=0))
    print(prompt + decode(new))
    print(f"({len(new)} tokens in {time.perf_counter() - start:.1f} s on the CPU)")
