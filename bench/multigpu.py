"""Data-parallel scaling: train_gpt2.py under mpirun on 1, 2, 4, 8 GPUs, ZeRO-0 and ZeRO-1, one table.

    python bench/multigpu.py                      # every power of two up to the GPUs present
    python bench/multigpu.py --nprocs 1 2 --steps 20

Each row runs `mpirun -n N python train_gpt2.py --device cuda -e d12 -b 64 -t 1024` with a total batch
of N*B*T tokens (weak scaling: every GPU does the same work per step), on a random-token shard written
once (speed does not depend on the text). tok/s is the mean over the steps after the first two;
efficiency = tok/s(N) / (N * tok/s(1)); peak memory = the most any one GPU showed in use (nvidia-smi,
sampled every 0.2 s). Several processes on one GPU run (host-staged reduction) but say nothing about
scaling: rows with more processes than GPUs are marked so.
Not here: correctness (tests/test_distributed.py compares N processes with one).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def gpu_count():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return len(out.stdout.split())


class MemorySampler(threading.Thread):
    """The most memory any GPU had in use while the run went on, in GiB."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = 0.0, True

    def run(self):
        while self.running:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            used = [float(x) / 1024 for x in out.split()] or [0.0]
            self.peak = max(self.peak, max(used))
            time.sleep(0.2)


def run(nproc, zero, args, shard):
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), "--device", "cuda", "--dtype", args.dtype,
           "-e", "d12", "-b", str(args.batch), "-t", "1024", "-d", str(nproc * args.batch * 1024),
           "-x", str(args.steps), "-i", shard, "-j", shard, "-v", "1000000", "-m", "1", "-s", "1000000",
           "-z", str(zero)]
    if nproc > 1:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
        extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
        cmd = [mpirun, "-n", str(nproc), *extra] + cmd
    sampler = MemorySampler()
    sampler.start()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    sampler.running = False
    sampler.join()
    if p.returncode != 0:
        return dict(error=(p.stderr.strip().splitlines() or ["failed"])[-1])
    ms = [float(x) for x in re.findall(r"\| ([\d.]+) ms \|", p.stdout)][2:]
    loss = [float(x) for x in re.findall(r"\| loss ([\d.]+) ", p.stdout)]
    tok_s = nproc * args.batch * 1024 / (np.mean(ms) / 1000)
    return dict(ms=float(np.mean(ms)), tok_s=tok_s, peak=sampler.peak, loss=loss[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", type=int, nargs="+", default=None, help="process counts [1 2 4 8 up to #GPUs]")
    parser.add_argument("--batch", type=int, default=64, help="micro-batch B per GPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    args = parser.parse_args()
    gpus = gpu_count()
    nprocs = args.nprocs or [n for n in (1, 2, 4, 8) if n <= gpus]
    from llmnp.data import write_shard
    shard = "/tmp/llmnp_multigpu_bench.bin"
    need = max(nprocs) * args.batch * 1024 * 2 + 1
    write_shard(shard, np.random.default_rng(0).integers(0, 50257, size=need))

    print(f"d12, B={args.batch} per GPU, T=1024, {args.dtype}, {args.steps} steps, {gpus} GPU(s)")
    print("| GPUs | ZeRO | ms/step | tok/s | scaling efficiency | peak GiB per GPU | final loss |")
    print("|------|------|---------|-------|--------------------|------------------|------------|")
    base = {}
    for zero in (0, 1):
        for n in nprocs:
            r = run(n, zero, args, shard)
            if "error" in r:
                print(f"| {n} | {zero} | error: {r['error']} |", flush=True)
                continue
            base.setdefault(zero, r["tok_s"] if n == 1 else None)
            eff = f"{100 * r['tok_s'] / (n * base[zero]):.1f}%" if base.get(zero) else "n/a"
            note = " (processes share GPUs)" if n > gpus else ""
            print(f"| {n}{note} | {zero} | {r['ms']:.1f} | {r['tok_s']:,.0f} | {eff} | {r['peak']:.1f} | {r['loss']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
