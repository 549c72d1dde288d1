# %% [markdown]
# # 11 · Data parallelism: all-reduce and ZeRO-1
#
# With N GPUs, the simplest way to train faster is **data parallelism**: every GPU (a *worker*) holds
# a full copy of the model, takes its own 1/N of each batch, and runs forward and backward on it. Then
# the workers **average their gradients**, so that all of them take the same AdamW step and the copies
# stay identical. Only the averaging needs communication.
#
# This notebook simulates N workers with NumPy in one process: the same arithmetic as
# [llmnp/distributed.py](../llmnp/distributed.py) does over MPI or NCCL, with the messages made visible.

# %%
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


# %% [markdown]
# ## Averaged gradients are the full batch's gradients
#
# The loss is a mean over the B·T positions. Split the batch in N equal parts: the full mean is the
# average of the N parts' means, and since a gradient is linear, the full batch's gradient is the
# average of the N workers' gradients. Checked, with N models built from the same seed (identical
# copies) and one reference model that sees the whole batch:

# %%
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


# %% [markdown]
# ## All-reduce, by hand
#
# "Every worker ends up with the sum of everyone's buffers" is an **all-reduce**. The obvious way,
# everyone sends to worker 0 which adds up and sends the result back, makes worker 0 receive and send
# N − 1 whole buffers: it becomes the bottleneck as N grows. The **ring all-reduce** (one of the
# algorithms NCCL chooses from) keeps every link equally busy. Arrange the workers in a ring and cut each buffer
# into N chunks:
#
# 1. **Reduce-scatter**, N − 1 steps: at step s, worker r sends its chunk (r − s) mod N to worker r + 1,
#    which adds it to its own copy of that chunk. Each chunk travels around the ring collecting one
#    more worker's contribution per step; after N − 1 steps worker r holds the complete sum of chunk
#    (r + 1) mod N.
# 2. **All-gather**, N − 1 steps: the complete chunks travel around the ring once more, each worker
#    overwriting its stale copy.
#
# With three workers holding 1 2 3, 10 20 30 and 100 200 300, the sums should be 111 222 333:

# %%
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

# %% [markdown]
# Follow chunk 0 (the first column of each worker): worker 0's 1 goes to worker 1 (11), then to
# worker 2 (111), complete; the all-gather then carries 111 to worker 0 and worker 1.
#
# The same three workers drawn as a ring, one panel per step: the arrows are the transfers of that
# step, each labelled with the chunk it carries and that chunk's running sum after it arrives. Every
# worker sends one chunk and receives one at every step, so every link carries the same load.

# %%
def draw_ring(buffers):
    N = len(buffers)
    angle = np.pi / 2 - 2 * np.pi * np.arange(N) / N
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    chunks = [np.array_split(b.astype(float).copy(), N) for b in buffers]
    fig, axes = plt.subplots(1, 2 * (N - 1), figsize=(3 * 2 * (N - 1), 3.2))
    for step, ax in enumerate(axes):
        gather = step >= N - 1
        s = step - (N - 1) if gather else step
        labels = []
        for r in range(N):
            c = (r + 1 - s) % N if gather else (r - s) % N  # the chunk worker r sends at this step
            dst = (r + 1) % N
            if gather:
                chunks[dst][c] = chunks[r][c].copy()
            else:
                chunks[dst][c] = chunks[dst][c] + chunks[r][c]
            labels.append((r, dst, c, chunks[dst][c]))
        for r, dst, c, value in labels:
            mid = (xy[r] + xy[dst]) / 2 * 1.25
            ax.annotate("", xy[dst] * 0.8, xy[r] * 0.8, arrowprops=dict(arrowstyle="->", color="tab:red",
                                                                    connectionstyle="arc3,rad=-0.25"))
            ax.text(*mid, f"chunk {c}: {value[0]:g}", ha="center", va="center", fontsize=7, color="tab:red")
        for r in range(N):
            ax.add_patch(plt.Circle(xy[r] * 0.8, 0.2, fc="white", ec="black"))
            ax.text(*(xy[r] * 0.8), f"w{r}", ha="center", va="center", fontsize=9)
        ax.set_title(f"{'all-gather' if gather else 'reduce-scatter'}, step {s}", fontsize=9)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    return [np.concatenate(c) for c in chunks]


print(draw_ring([np.array([1, 2, 3]), np.array([10, 20, 30]), np.array([100, 200, 300])]))
#
# Now on the real gradients. Each worker sent $2(N-1)$ chunks of $1/N$ of the buffer:
# $2(N-1)/N$ buffers in all, under 2 whatever N is.

# %%
results, sent = ring_allreduce([w.grads_memory for w in workers])
print("every worker got the sum:", all(np.allclose(res, N * average) for res in results))
nbytes = workers[0].grads_memory.nbytes
print(f"buffer {nbytes:,} bytes; each worker sent {sent:,} = {sent / nbytes:.2f} buffers (2(N-1)/N = {2 * (N - 1) / N:.2f})")

# %%
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

# %% [markdown]
# For GPT-2 small in bf16 a gradient buffer is about 250 MB, so each step moves about 2 × 250 MB per
# GPU whatever N, which NVLink (hundreds of GB/s) handles in a few milliseconds. llmnp runs it once per
# step, after the last backward and on the same stream as the kernels, so it is not hidden: those
# milliseconds add to the step, a few percent of a GPT-2 small step at B = 64 (over 100 ms on one
# GPU). Hiding it would mean starting each layer's all-reduce while backward still runs on the layers
# below, on a second stream; llmnp keeps the simpler order.
#
# ## ZeRO-1: split the optimizer state
#
# After the all-reduce, all N workers run the *same* AdamW update on the *same* numbers: N copies of
# the optimizer state (m and v, and in bf16 training the fp32 master weights) doing N copies of the
# same work. ZeRO stage 1 gives each worker one 1/N slice of the flat buffer to own instead:
#
# 1. **reduce-scatter** the gradients (the first half of the ring above): worker r gets the sum of its
#    own slice only;
# 2. each worker runs AdamW on **its slice**, keeping m and v for that slice only;
# 3. **all-gather** the updated parameters (the second half of the ring): everyone has the full model
#    again.
#
# The same traffic as one all-reduce, and the optimizer's memory and work divided by N. Memory per GPU
# for GPT-2 small trained in bf16 as llm.c does it (bf16 parameters and gradients, 2 bytes each; fp32
# m, v and master weights, 4 bytes each):

# %%
n = num_parameters(GPT2Config.preset("d12"))
print(f"{'GPUs':>5} {'without ZeRO':>14} {'ZeRO-1':>10}   (GiB per GPU, parameters + gradients + optimizer state)")
for gpus in (1, 2, 4, 8):
    plain = n * (2 + 2 + 12) / 2**30
    zero1 = n * (2 + 2 + 12 / gpus) / 2**30
    print(f"{gpus:>5} {plain:>14.2f} {zero1:>10.2f}")

# %% [markdown]
# Simulated below for two steps. After `GPT2.set_shard(start, end)`, `update` changes only that slice
# of the flat buffer, each tensor in it with its own weight decay, and keeps m and v of the slice's size.
# The reference model takes the ordinary full update on the full batch's gradient; after each step
# every worker's parameters must equal the reference's.

# %%
hyper = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
size = reference.num_parameters // N
shards = [(r * size, (r + 1) * size) for r in range(N)]          # worker r owns [r*size, (r+1)*size)
for w, shard in zip(workers, shards):
    w.set_shard(*shard)

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
    for w in workers:
        w.update(t=t, **hyper)
    # 3. all-gather: every worker copies every slice from its owner
    for start, end in shards:
        owner = workers[start // size].params_memory[start:end].copy()
        for w in workers:
            w.params_memory[start:end] = owner

    diff = max(np.abs(w.params_memory - reference.params_memory).max() for w in workers)
    print(f"step {t}: max |worker - reference| = {diff:.1e}; each worker's m holds {workers[0].m_memory.size} "
          f"numbers, the reference's {reference.m_memory.size}")

# %% [markdown]
# (The gradient clipping norm needs one more number from every worker: each computes the sum of
# squares of its slice, and those N numbers are summed, `Distributed.grad_norm`.)
#
# ## The real thing
#
# [llmnp/distributed.py](../llmnp/distributed.py) runs one process per GPU (or several on a CPU),
# started by MPI: `mpiexec -n 4 python train_gpt2.py ... -z 1`. On GPUs the all-reduce, reduce-scatter
# and all-gather are NCCL's, on the device buffers; on the CPU they are MPI's, on the NumPy buffers.
# Each process reads its own B × T slice of every batch (llm.c's data loader does the split), so the
# N processes together train on N times the tokens per step.
#
# That is the last notebook: back to [00 overview](00_overview.ipynb) for the map.
