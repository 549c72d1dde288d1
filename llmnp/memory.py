"""How much memory a model and a training run take, from the same tables that allocate them, and a check
that refuses (one line, with the sizes) what cannot fit before anything is allocated.

    model:     parameters (dtype) + fp32 master weights where parameters are bf16
    training:  + gradients (dtype) + AdamW m and v (fp32, 1/N each under ZeRO-1 with N processes)
               + activations and their statistics for (B, T) + one layer's activation gradients

Not here: the allocation itself (params.py, model.py).
"""
import os

import numpy as np

from llmnp.errors import UserError
from llmnp.params import STATISTICS, activation_specs, gradient_scratch_specs, num_elements, num_parameters


def model_bytes(config, dtype, state_dtype):
    """Bytes of a model's parameters, and of its master weights when state_dtype is wider."""
    n = num_parameters(config)
    return n * np.dtype(dtype).itemsize + (n * np.dtype(state_dtype).itemsize if state_dtype != dtype else 0)


def training_bytes(config, B, T, dtype, state_dtype, recompute=1, shards=1):
    """Bytes a training process holds: model_bytes + gradients + AdamW state + activations for (B, T)."""
    n = num_parameters(config)
    dtype, state_dtype = np.dtype(dtype), np.dtype(state_dtype)
    specs = activation_specs(config, B, T, recompute)
    stats = [s for s in specs if s[0] in STATISTICS]
    acts = num_elements(specs) - num_elements(stats)
    return (model_bytes(config, dtype, state_dtype) + n * dtype.itemsize + 2 * (n // shards) * state_dtype.itemsize
            + acts * dtype.itemsize + num_elements(stats) * state_dtype.itemsize
            + num_elements(gradient_scratch_specs(config, B, T)) * dtype.itemsize)


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


def human(nbytes):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= 1024
