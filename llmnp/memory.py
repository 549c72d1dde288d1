"""How much memory, disk and time a model and a training run take, predicted from the same tables that
allocate them, and a check that refuses (one line, with the sizes and the largest -b that fits) what
cannot fit before anything is allocated.

    model:     parameters (dtype) + fp32 master weights where parameters are bf16
    training:  + gradients (dtype, and the classifier's (Vp, C) summed in fp32) + AdamW m and v (fp32,
               1/N each under ZeRO-1 with N processes) + activations and their statistics for (B, T)
               + the logits of min(B*T, CLASSIFIER_ROWS) rows (Vp each)
               + scratch: one layer's activation gradients and the largest temporary a layer makes
               + the runtime: Python, NumPy and BLAS on the CPU; the CUDA context on the GPU
    disk:      a checkpoint's model file and per-process state file, and what -n / -nk add up to
    time:      a step's floating-point work over the device's measured product rate, plus the optimizer's
               memory traffic over its measured copy rate; an ETA from the steps measured so far

estimate() is the table a run prints at its start (and alone, with --estimate); check_fits() refuses a
run the device cannot hold; predict_step_ms() and eta_line() are the time. The CPU numbers are checked
against the measured peak RSS in tests/test_memory.py.
Not here: the allocation itself (params.py, model.py).
"""
import os
import time
from dataclasses import dataclass, field

import numpy as np

from llmnp.errors import UserError
from llmnp.params import (CLASSIFIER_ROWS, STATISTICS, activation_specs, gradient_scratch_specs, num_elements,
                          num_parameters)

# What a process holds before any model buffer: Python, NumPy, llmnp's modules, OpenBLAS's per-thread
# buffers and the worker threads (measured on the CPU: 28 MiB after the imports, ~60 MiB once the
# first products and worker threads have run), and on the GPU the CUDA context, cuBLAS's workspace and
# the compiled kernels (not measured here; ~0.5 GiB on an H100 with lazy module loading).
RUNTIME_BYTES = {"cpu": 64 << 20, "cuda": 512 << 20}
MODEL_HEADER_BYTES = 1024              # llm.c's model and state files open with 256 int32
LOADER_STATE_BYTES = 2520 + 16         # a shuffling loader's mt19937 state and two counts (state file)
CPU_DWEIGHT_BLOCK = 1 << 22            # matmul.py's DWEIGHT_BLOCK: the largest dweight partial product


def itemsize(dtype):
    """Bytes per element of a dtype, a NumPy dtype name, or "fp32" / "bf16" / "bfloat16"."""
    if isinstance(dtype, str):
        dtype = {"fp32": "float32", "fp64": "float64", "bf16": 2, "bfloat16": 2}.get(dtype, dtype)
        if dtype == 2:
            return 2
    return np.dtype(dtype).itemsize


def model_bytes(config, dtype, state_dtype):
    """Bytes of a model's parameters, and of its master weights when state_dtype is wider."""
    n = num_parameters(config)
    size, state_size = itemsize(dtype), itemsize(state_dtype)
    return n * size + (n * state_size if state_size != size else 0)


def training_bytes(config, B, T, dtype, state_dtype, recompute=1, shards=1):
    """Bytes of the buffers a training process allocates: model_bytes + gradients (with the classifier's
    fp32 sum) + AdamW state + activations (logits included) for (B, T) + one layer's activation gradients
    (no runtime, no scratch: estimate() has those)."""
    n = num_parameters(config)
    size, state_size = itemsize(dtype), itemsize(state_dtype)
    specs = activation_specs(config, B, T, recompute)
    stats = [s for s in specs if s[0] in STATISTICS]
    acts = num_elements(specs) - num_elements(stats)
    dwte = config.padded_vocab_size * config.channels * state_size
    return (model_bytes(config, dtype, state_dtype) + n * size + dwte + 2 * (n // shards) * state_size
            + acts * size + num_elements(stats) * state_size
            + num_elements(gradient_scratch_specs(config, B, T)) * size)


# ----------------------------------------------------------------------------------- the estimate
@dataclass
class Estimate:
    """One process's predicted memory, row by row, and the disk its checkpoints take.
    rows: [(label, bytes, note)]; peak_bytes: their sum; runtime_bytes: the row the process holds before
    it allocates anything; model_bytes: the parameters and master weights (allocated when the model is built)."""
    title: str
    rows: list
    runtime_bytes: int
    model_bytes: int
    disk: list = field(default_factory=list)      # [(label, bytes, note)]
    disk_total: int = 0
    inputs: dict = field(default_factory=dict)    # estimate()'s arguments, for largest_batch

    @property
    def peak_bytes(self):
        return sum(nbytes for _, nbytes, _ in self.rows)

    def lines(self):
        """The table as text lines: the rows, the predicted peak, then the checkpoint sizes."""
        out = [self.title]
        for label, nbytes, note in self.rows:
            out.append(f"  {label:<16} {human(nbytes):>11}" + (f"  {note}" if note else ""))
        out.append(f"  {'predicted peak':<16} {human(self.peak_bytes):>11}  per process"
                   + ("" if self.inputs.get("device") != "cuda" else " (what nvidia-smi shows)"))
        for label, nbytes, note in self.disk:
            out.append(f"{label} {human(nbytes)}" + (f" {note}" if note else ""))
        return out


def estimate(config, B, T, dtype="fp32", recompute=1, processes=1, zero_stage=0, device="cpu",
             checkpoint_every=0, num_steps=0, checkpoints_kept=0, master_weights=True):
    """The memory one training process of `processes` holds at its peak (the second step's backward: every
    buffer exists and the largest temporary is live), and the disk of its checkpoints.

    dtype: the storage dtype ("fp32", "bf16", or a NumPy dtype); statistics, AdamW state and master
    weights are fp32 where it is narrower (master_weights=False, llm.c's -w 0: no master weights).
    recompute: -r (0, 1: GELU, 2: GELU and the layernorms). zero_stage 1 with processes > 1 divides AdamW's
    m and v (when the parameters split evenly, as distributed.setup_zero). checkpoint_every, num_steps,
    checkpoints_kept: -n, the steps of the run, -nk (the disk total; num_steps 0 leaves it out)."""
    if device not in RUNTIME_BYTES:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
    size = itemsize(dtype)
    state_size = 4 if size < 4 else size
    master = state_size != size and master_weights
    L, C, NH, Vp = config.num_layers, config.channels, config.num_heads, config.padded_vocab_size
    n = num_parameters(config)
    sharded = zero_stage >= 1 and processes > 1 and n % processes == 0
    shard = n // processes if sharded else n
    specs = activation_specs(config, B, T, recompute)
    stats = num_elements([s for s in specs if s[0] in STATISTICS])
    logits = min(B * T, CLASSIFIER_ROWS) * Vp
    acts = num_elements(specs) - stats - logits
    dacts = num_elements(gradient_scratch_specs(config, B, T))
    if device == "cpu":
        # attention backward holds the recomputed probabilities and their gradient, (B, NH, T, T) each;
        # layernorm backward two (B, T, C) temporaries; matmul backward a dweight block (matmul.py)
        temporary = max(2 * B * NH * T * T, 2 * B * T * C, min(CPU_DWEIGHT_BLOCK // C, Vp) * C) * size
        scratch_note = "one layer's activation gradients + attention's (B,NH,T,T) probabilities and their gradient"
    else:
        # attention backward's D (B, NH, T) fp32 (cuda/attention.py); the fp32 copy of the weights that
        # load_parameters sends from the host, freed into CuPy's pool, which keeps it (later the finite
        # check before a checkpoint, one byte a parameter, fits in it). Against the peaks of the README's
        # bench/gpu.py table (d12, T=1024, B=4, 16, 64, bf16 and fp32, -r 0; five of the six from an earlier
        # run less its probs buffer) this table reads 0.99-1.02 with that row, 0.93-0.99 without it.
        # In bf16 the tensor-core attention backward also adds dq into a (B, T, C) fp32 buffer (T rounded
        # up to 64 on Hopper: its query tiles) and leaves the qkv bias gradient's partial sums of dk and dv
        # in a (B * ceil(T/16), 2C) one (a quarter of that on Hopper, which also keeps a copy of lse beside
        # D, both in rows of T rounded up to 4).
        dq = B * -(-T // 64) * 64 * C
        temporary = B * NH * T * 4 + 4 * n + ((dq + B * -(-T // 16) * 2 * C + B * NH * -(-T // 4) * 4) * 4
                                              if size == 2 else 0)
        scratch_note = ("one layer's activation gradients + attention's row sums"
                        + (", dq and bias partial sums" if size == 2 else "") + " + the weights' upload copy")
    dtype_name = {2: "bf16", 4: "fp32", 8: "fp64"}.get(size, str(dtype))
    rows = [
        ("parameters", n * size, f"{n:,} x {size} B"),
        ("gradients", n * size + (shard * size if sharded else 0) + Vp * C * state_size,
         "+ the classifier's (Vp, C) summed in fp32" + (" + ZeRO-1's reduce-scatter slice" if sharded else "")),
        ("AdamW m, v", 2 * shard * state_size,
         f"1/{processes} each (ZeRO-1)" if sharded else ("fp32" if state_size != size else "")),
        ("master weights", n * 4 if master else 0,
         "fp32 copy of the bf16 parameters" if master else
         f"none ({dtype_name} parameters{', -w 0' if state_size != size else ''})"),
        ("activations", acts * size + stats * state_size,
         f"-r {recompute}: " + {0: "every layer's GELU output kept",
                                1: "one layer's GELU output, recomputed in backward"}.get(
             recompute, "one layer's GELU and layernorm outputs, recomputed in backward")),
        ("logits", logits * size, f"({min(B * T, CLASSIFIER_ROWS)}, Vp): the classifier's rows at a time, dlogits written over them"),
        ("scratch", dacts * size + temporary, scratch_note),
        ("runtime", RUNTIME_BYTES[device], "Python, NumPy, BLAS buffers" if device == "cpu"
         else "CUDA context, cuBLAS workspace, kernels (approximate)"),
    ]
    title = (f"memory per process: L={L} C={C} B={B} T={T} {dtype_name} -r {recompute}, {processes} process"
             f"{'es' if processes > 1 else ''}{', ZeRO-1' if sharded else ''}, {device}")
    disk, disk_total = checkpoint_disk(n, size, shard, master, processes,
                                       checkpoint_every, num_steps, checkpoints_kept)
    return Estimate(title, rows, RUNTIME_BYTES[device], n * size + (n * 4 if master else 0),
                    disk, disk_total,
                    dict(config=config, T=T, dtype=dtype, recompute=recompute, processes=processes,
                         zero_stage=zero_stage, device=device, master_weights=master_weights))


def checkpoint_files(n, size, shard, master):
    """(model file bytes, one process's state file bytes) of a checkpoint: the model file holds the n
    parameters in the run's dtype, the state file AdamW's m and v (and the fp32 master weights) of its
    shard; a shuffling loader adds its permutations (a few KiB, not counted)."""
    return MODEL_HEADER_BYTES + n * size, MODEL_HEADER_BYTES + (3 if master else 2) * shard * 4 + LOADER_STATE_BYTES


def checkpoints_on_disk(checkpoint_every, num_steps, checkpoints_kept):
    """(written, kept at the end): the steps train_gpt2 writes a checkpoint at (every -n steps and the
    last step) and how many of them -nk leaves."""
    steps = list(range(checkpoint_every, num_steps + 1, checkpoint_every)) if checkpoint_every > 0 else []
    if num_steps > 0 and num_steps not in steps:
        steps.append(num_steps)
    kept = set()
    for s in steps:
        kept.add(s)
        if checkpoints_kept > 0 and checkpoint_every > 0:
            kept.discard(s - checkpoints_kept * checkpoint_every)
    return len(steps), len(kept)


def checkpoint_disk(n, size, shard, master, processes, checkpoint_every, num_steps, checkpoints_kept):
    model_file, state_file = checkpoint_files(n, size, shard, master)
    one = model_file + processes * state_file
    lines = [("checkpoint on disk:", one, f"(model file {human(model_file)} + {processes} state file"
              f"{'s' if processes > 1 else ''} of {human(state_file)})")]
    total = 0
    if num_steps > 0:
        written, kept = checkpoints_on_disk(checkpoint_every, num_steps, checkpoints_kept)
        total = kept * one
        how = (f"every {checkpoint_every} steps" + ("" if num_steps % checkpoint_every == 0 else
                                                     f" and at step {num_steps}") if checkpoint_every > 0
               else f"at step {num_steps} only (-n 0)")
        keep = f", -nk {checkpoints_kept} keeps {kept}" if checkpoints_kept > 0 and checkpoint_every > 0 else ""
        lines.append((f"checkpoints of {num_steps} steps:", total, f"({written} written, {how}{keep})"))
    return lines, total


def largest_batch(budget_bytes, config, T, **kwargs):
    """The largest B whose estimate(config, B, T, **kwargs).peak_bytes fits budget_bytes (0: not even B=1)."""
    fits = lambda B: estimate(config, B, T, **kwargs).peak_bytes <= budget_bytes   # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:                         # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_fits(est, allocated=0):
    """UserError (one line) when the device's free memory is less than what the run has yet to allocate:
    est.peak_bytes less the runtime (already there) and `allocated` (buffers already made, e.g. est.model_bytes
    when the model was built first). It names the largest -b that fits."""
    device = est.inputs["device"]
    free = available_bytes(device)
    need = est.peak_bytes - est.runtime_bytes - allocated
    if need <= free:
        return
    inputs = {k: v for k, v in est.inputs.items() if k not in ("config", "T")}
    B = largest_batch(free + est.runtime_bytes + allocated, est.inputs["config"], est.inputs["T"], **inputs)
    where = "the GPU" if device == "cuda" else "this machine"
    advice = (f"-b {B} is the largest that fits (with -d to keep the tokens per step)" if B > 0 else
              "not even -b 1 fits: use a smaller model" + (", -z 1 with more processes" if device == "cuda" else "")
              + " or a smaller -t")
    raise UserError(f"this run needs {human(need)} more at its peak ({human(est.peak_bytes)} in all, "
                    f"python train_gpt2.py ... --estimate shows where), {where} has {human(free)} free: {advice}")


def available_bytes(device):
    """Memory a new allocation can take now: the GPU's free memory, or the host's MemAvailable."""
    if device == "cuda":
        import cupy
        return int(cupy.cuda.runtime.memGetInfo()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require(nbytes, device, what, advice):
    """UserError when nbytes exceed what `device` has free: '<what> needs X, the device has Y free: advice'."""
    free = available_bytes(device)
    if nbytes > free:
        where = "the GPU" if device == "cuda" else "this machine"
        raise UserError(f"{what} needs {human(nbytes)}, {where} has {human(free)} free: {advice}")


def peak_rss_bytes():
    """This process's peak resident set so far (VmHWM), the CPU's measured counterpart of peak_bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def human(nbytes):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024


# ------------------------------------------------------------------------------------------ time
def step_flops(config, B, T, grad_accum_steps=1, causal=False):
    """Floating-point operations of one optimizer step of one process: the products (2 per multiply-add)
    of forward (1x) and backward (2x: dinp and dweight), the attention scores and their backward (2
    products forward, 5 backward: the scores recomputed, dv, datt, dq, dk), over all micro-batches.
    causal: count only the lower triangle of the scores (the GPU's flash kernels skip the rest; NumPy
    computes the whole (T, T))."""
    L, C, Vp = config.num_layers, config.channels, config.padded_vocab_size
    matmul_weights = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + Vp * C   # the classifier is wte
    tokens = B * T
    products = 3 * 2 * tokens * matmul_weights
    attention = 7 * 2 * B * T * T * C * L * (0.5 if causal else 1.0)
    return grad_accum_steps * (products + attention)


def optimizer_bytes(config, dtype):
    """Bytes the step moves outside the products, per optimizer step: zeroing the gradients, their norm,
    and AdamW reading and writing parameters, m, v (and master weights) and reading the gradients."""
    n = num_parameters(config)
    size = itemsize(dtype)
    state = 4 if size < 4 else size
    return n * (size + size + 2 * size + size + 4 * state + (2 * 4 if size < 4 else 0))


@dataclass
class Rates:
    flops: float          # FLOP/s of one (B*T, C) x (C, 4C) product through the backend's matmul
    bytes: float          # bytes/s of a large copy (read + write)
    what: str


def measure_rates(device, dtype, C, rows=512, seconds=0.3):
    """The device's product rate and copy rate, timed on this machine now: matmul_forward of the backend
    on a (rows, C) x (4C, C)^T product (the fc layer's shape) in `dtype`, and a 64 MiB copy."""
    if device == "cuda":
        from llmnp import cuda as ops
        xp = ops.xp()
        sync = xp.cuda.Device().synchronize
        dt = _device_dtype(dtype)
    else:
        from llmnp import layers as ops
        xp, sync, dt = np, (lambda: None), np.dtype({"fp32": "float32", "fp64": "float64"}.get(dtype, dtype))
    inp, w, out = xp.ones((rows, C), dt), xp.ones((4 * C, C), dt), xp.empty((rows, 4 * C), dt)
    flops = _rate(lambda: ops.matmul_forward(out, inp, w, None), sync, seconds) * 2 * rows * C * 4 * C
    a = xp.ones(16 << 20, np.float32)
    b = xp.empty_like(a)
    copy = _rate(lambda: b.__setitem__(Ellipsis, a), sync, seconds / 3) * 2 * a.nbytes
    return Rates(flops, copy, f"{flops / 1e9:,.0f} GFLOP/s on a ({rows}, {C}) x ({C}, {4 * C}) product, "
                              f"{copy / 1e9:,.1f} GB/s copying, measured now")


def _device_dtype(dtype):
    if dtype in ("bf16", "bfloat16"):
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"fp32": "float32"}.get(dtype, dtype))


def _rate(fn, sync, seconds):
    """Calls per second of fn, after one warm-up call, timed for about `seconds`."""
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if calls >= 3 or calls & (calls - 1) == 0:      # sync now and then: at 1, 2, 4, 8, ... and later
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return calls / elapsed


def predict_step_ms(config, B, T, dtype="fp32", device="cpu", grad_accum_steps=1, rates=None):
    """(ms per optimizer step, one line saying how): step_flops over the measured product rate plus
    optimizer_bytes over the measured copy rate. The products run slower than the timed one where their
    shapes are narrow, and the elementwise layers are not counted: a floor more than a promise."""
    rates = rates or measure_rates(device, dtype, config.channels, rows=min(B * T, 2048))
    flops = step_flops(config, B, T, grad_accum_steps, causal=device == "cuda")
    seconds = flops / rates.flops + optimizer_bytes(config, dtype) / rates.bytes
    text = (f"time: {flops / 1e9:,.1f} GFLOP and {optimizer_bytes(config, dtype) / 1e9:,.2f} GB of optimizer "
            f"traffic a step at {rates.what}: predicted {1000 * seconds:,.0f} ms/step")
    return 1000 * seconds, text


def duration(seconds):
    """3725 -> '1h02m', 187 -> '3m07s', 41.2 -> '41s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def eta_line(step, num_steps, step_seconds, window=20):
    """'time: 100 of 1000 steps in 1m02s, 9m18s to go at 620 ms/step (ETA 14:32)': the time left for the
    remaining steps at the mean of the last `window` measured step times (the first step, which
    allocates and compiles, left out once there are others). step_seconds: every step's duration so far."""
    times = list(step_seconds[1:] if len(step_seconds) > 1 else step_seconds)[-window:]
    if not times:
        return f"time: {step} of {num_steps} steps"
    per_step = sum(times) / len(times)
    left = max(0, num_steps - step) * per_step
    finish = time.strftime("%H:%M", time.localtime(time.time() + left))
    return (f"time: {step} of {num_steps} steps in {duration(sum(step_seconds))}, {duration(left)} to go at "
            f"{1000 * per_step:,.0f} ms/step (ETA {finish})")
