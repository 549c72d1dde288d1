"""CPU benchmark: one training step (forward + backward + clip + AdamW) of the NumPy backend.

    python bench/cpu.py            # d12 at B=4 T=64 (llm.c's CPU setting) and a small d6 config

Prints ms/step, tok/s and the process's peak resident memory per config. Steps are timed after one
warm-up step (which allocates the gradient and AdamW buffers).
"""
import argparse
import os
import platform
import resource
import time

import numpy as np

from llmnp import GPT2, GPT2Config


def bench(name, config, B, T, steps):
    model = GPT2(config, seed=0)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(B, T + 1)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        model.forward(x, y)
        model.zero_grad()
        model.backward()
        norm = model.grad_norm()
        model.update(1e-4, 0.9, 0.95, 1e-8, 0.0, step + 1, grad_scale=min(1.0, 1.0 / norm))
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times[1:]))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # KiB -> GiB
    print(f"| {name:<12} | {B:>2} | {T:>4} | {ms:9.0f} | {B * T / ms * 1000:7.0f} | {rss:14.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config (median reported)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print("| config       |  B |    T |   ms/step |   tok/s | peak RSS (GiB) |")
    print("|--------------|----|------|-----------|---------|----------------|")
    bench("d6 (small)", GPT2Config.preset("d6"), 4, 64, args.steps)
    bench("d12 (124M)", GPT2Config.preset("d12"), 4, 64, args.steps)


if __name__ == "__main__":
    main()
