# %% [markdown]
# # 10 · CUDA: one kernel, line by line
#
# On a GPU, `llmnp` runs the same model code with every layer function swapped for a launcher of the
# same name in `llmnp.cuda`, each starting a CUDA kernel from `llmnp/cuda/<layer>.cu` (and cuBLAS for the
# matmuls). A kernel is a C++ function that thousands of GPU threads run at once, each on its own small
# piece of the data.
#
# This notebook reads the simplest one, GELU's forward (notebook 05), line by line, and the Python
# launcher that starts it. The reading and a compile step work on any machine; the cells that **run**
# kernels need an NVIDIA GPU with CuPy, and without one they print a note and skip.

# %%
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


# %% [markdown]
# ## The whole file

# %%
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

# %% [markdown]
# ## Line by line
#
# **The header.** What the file is, the formula, and the one idea of the implementation. It includes
# `common.cuh`, the helpers every kernel file shares. The relevant part of that:

# %%
COMMON = os.path.join(CUDA_DIR, "common.cuh")
show(COMMON, "#if LLMNP_BF16", "#endif")
show(COMMON, "__device__ __forceinline__ float toF(float", "#endif")
show(COMMON, "#define PACK", "aligned16")

# %% [markdown]
# - `floatX` is the storage type: `float`, or `__nv_bfloat16` (16-bit brain float) when the launcher
#   compiles the file with `-DLLMNP_BF16=1`. One source, two builds. Arithmetic is always done in
#   `float`: `toF` converts on load and `fromF` on store (rounding to bf16 if that is the storage).
# - `PACK` elements of `floatX` fill 16 bytes: 4 floats or 8 bf16. `x128` is a 16-byte-aligned struct
#   of them, and `load128` / `store128` move one with a single memory instruction.
# - `aligned16` checks that a pointer is a multiple of 16 bytes, which 16-byte loads require.
#
# **The math**, as in `llmnp/gelu.py`:

# %%
show(GELU_CU, "#define GELU_SCALE")
show(GELU_CU, "__device__ __forceinline__ float gelu(", "}")

# %% [markdown]
# - `#define` pastes the constant $\sqrt{2/\pi}$ into the code; the `f` suffix makes it a `float`
#   (a bare `0.797...` would be a `double`, and double arithmetic is many times slower on most GPUs).
# - `__device__`: this function runs on the GPU and is called from kernels, not from Python.
#   `__forceinline__` pastes its body into the caller, so there is no call overhead.
# - `tanhf` is the single-precision tanh of CUDA's math library.
#
# **The kernel's signature.**

# %%
show(GELU_CU, "gelu_forward_kernel(")

# %% [markdown]
# - `__global__` marks a **kernel**: launched from the host (Python here), run by every thread of a
#   *grid* of thread *blocks*.
# - `extern "C"` turns off C++ name mangling, so the launcher can ask for the kernel by its plain name.
# - `out` and `inp` are pointers into GPU memory: the CuPy arrays' data. `n` is the element count,
#   `long long` (64-bit) because a (B, T, 4C) activation can exceed $2^{31}$ elements.
# - Kernels return nothing: results go through the output pointer.
#
# **Which elements is this thread's?**

# %%
show(GELU_CU, "const long long i = ", "if (i >= n) return;")

# %% [markdown]
# Every thread runs this same code; only the built-in indices differ. `blockIdx.x` is the block's
# number in the grid, `blockDim.x` the threads per block (256, set by the launcher), `threadIdx.x` the
# thread's number within its block. So `blockIdx.x * blockDim.x + threadIdx.x` numbers all threads of
# the grid 0, 1, 2, …, and thread number $j$ takes the PACK elements starting at $i = j \cdot
# \text{PACK}$. The cast to `long long` comes first so the product cannot overflow 32 bits. The grid is
# rounded up to whole blocks, so the last threads may have nothing to do: they return.
#
# The picture, for a grid of 2 blocks of 4 threads (the launcher uses 256) and PACK = 4 over n = 27
# elements: each thread's PACK elements, coloured by block; the last thread finds only 3 and takes the
# slow path below, the threads after it return at once.

# %%
n_demo, PACK_demo, threads_demo = 27, 4, 4
fig, ax = plt.subplots(figsize=(10, 1.9))
for j in range(2 * threads_demo):                    # j = blockIdx.x * blockDim.x + threadIdx.x
    block, thread, i = j // threads_demo, j % threads_demo, j * PACK_demo
    for e in range(i, min(i + PACK_demo, n_demo)):
        ax.add_patch(plt.Rectangle((e, 0), 0.95, 0.95, fc=("tab:blue", "tab:orange")[block], alpha=0.3 + 0.15 * thread))
        ax.text(e + 0.47, 0.47, e, ha="center", va="center", fontsize=7)
    ax.text(i + PACK_demo / 2, -0.45, f"t{thread}" if i < n_demo else f"t{thread}: i >= n, returns",
            ha="center" if i < n_demo else "left", fontsize=8)
for block in range(2):
    ax.text(block * threads_demo * PACK_demo + threads_demo * PACK_demo / 2, 1.3, f"block {block}",
            ha="center", fontsize=9, color=("tab:blue", "tab:orange")[block])
ax.set_xlim(-0.5, 2 * threads_demo * PACK_demo + 0.5)
ax.set_ylim(-0.8, 1.7)
ax.axis("off")
ax.set_title("element index i = (blockIdx.x * blockDim.x + threadIdx.x) * PACK", fontsize=9)
plt.show()

# %% [markdown]
# **The fast path: 16 bytes in, 16 bytes out.**

# %%
show(GELU_CU, "if (i + PACK <= n && aligned16(out)", "store128(out + i, o);")

# %% [markdown]
# If all PACK elements exist and both pointers are aligned, the thread loads its PACK inputs with one
# instruction, applies `gelu` to each in `float`, and stores the PACK results with one instruction.
# `PACK` is a compile-time constant, so the compiler unrolls the small loop completely. Why bother?
# GELU does ~20 arithmetic operations per element but must read and write 4 bytes each (in fp32): its
# speed is set by memory traffic, and fewer, wider memory instructions use the memory system better.
#
# **The slow path: the tail.**

# %%
show(GELU_CU, "for (long long k = i; k < n && k < i + PACK; k++) out[k]")

# %% [markdown]
# The last thread may own fewer than PACK elements (n not a multiple of PACK), or a pointer may be
# unaligned (a view starting mid-buffer): then it goes element by element. Same results, only slower,
# and only for a handful of threads.
#
# `gelu_backward_kernel`, below it in the file, is the same shape with two inputs (`inp` and `dout`)
# and `gelu_grad`, notebook 05's derivative.
#
# ## The launcher

# %%
show(os.path.join(CUDA_DIR, "gelu.py"), "def gelu_forward", "k((blocks")

# %% [markdown]
# - `check` asserts that every array is a C-contiguous CuPy array of the expected dtype: the kernel
#   receives raw pointers and would silently read garbage otherwise.
# - `kernel(...)` compiles `gelu.cu` once per process and storage dtype (with NVRTC, CUDA's runtime
#   compiler, through `cupy.RawModule`) and fetches the kernel by its `extern "C"` name.
# - The grid: each block of 256 threads covers 256 × PACK elements, so `blocks(n, 256 * PACK)` =
#   ⌈n / (256·PACK)⌉ blocks.
# - `np.int64(out.size)`: CuPy passes scalars by their NumPy type and checks nothing against the C
#   signature, so `long long n` must receive an explicit 64-bit integer.
#
# ## What the GPU actually runs
#
# NVRTC compiles without a GPU, so this works on any machine with the CUDA toolkit's NVRTC installed
# (`pip install -e ".[cuda]"`). The intermediate assembly, PTX, shows the 16-byte packs as `v4`
# (4-float vector) loads and stores:

# %%
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

# %% [markdown]
# ## Running it: GPU vs NumPy
#
# **These cells need an NVIDIA GPU and CuPy**; without them they print a note and do nothing.
#
# First, correctness: the same input through the kernel and through `llmnp.gelu_forward`. In float32
# the two agree to rounding (the GPU's `tanhf` is not NumPy's `tanh`, so not bit for bit).

# %%
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


# %% [markdown]
# Then speed, over sizes from 64 K to 64 M elements. The GPU is timed with CUDA events (kernel
# launches return before the kernel finishes). A memory-bound kernel should approach the GPU's memory
# bandwidth: each element is 4 bytes read and 4 written.

# %%
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

# %% [markdown]
# For small arrays the GPU's time is flat: launching a kernel from Python costs around ten
# microseconds whatever the kernel does, so tiny kernels are all overhead (one reason GPU trainers fuse
# layers). For large ones the time grows with n, at close to the memory bandwidth (about 3 TB/s on an
# H100; arrays that fit in its 50 MB L2 cache can go faster).
#
# ## The whole model on both devices
#
# `GPT2(config, device="cuda")` runs the same `model.py` with the `llmnp.cuda` functions. In float32
# the two devices compute the same loss and gradients to rounding; the time per training step is
# another matter.

# %%
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

# %% [markdown]
# Every kernel in [llmnp/cuda/](../llmnp/cuda/) follows the pattern read here, with more going on
# between the load and the store: layernorm and the classifier reduce a row across a warp or a block
# of threads (`warp_sum`, `block_sum` in `common.cuh`), attention walks over tiles of keys, AdamW runs
# over the flat buffers of notebook 00. Each is tested against its NumPy function, the reference the earlier notebooks derived.
#
# Next: [11 data parallel](11_data_parallel.ipynb), more than one GPU.
