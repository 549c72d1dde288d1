"""CPU benchmark: one training step of llmnp's NumPy backend against PyTorch on the same CPU, in one run.

    python bench/cpu.py                                  # d6 and d12, B=4 T=64 (llm.c's CPU setting)
    python bench/cpu.py --configs d12 --steps 10 --torch-python /path/to/venv/bin/python

One step = forward with the loss, zero_grad + backward, global gradient norm + clipping to 1.0, AdamW
(lr 1e-4, betas 0.9/0.95, weight decay 0.1 on the matrices). Three processes per config, each with its
own peak resident memory (ru_maxrss, what the process ever held, imports included):
  llmnp     the GPT2 class of this repository, float32
  torch     PyTorch on the CPU: llm.c's train_gpt2.py GPT (tied wte, tanh GELU, causal
            scaled_dot_product_attention, nn.Linear), fused AdamW, clip_grad_norm_; skipped, saying so,
            when no Python with torch is found (--torch-python, or this one)
  products  NumPy alone doing the same linear-layer products (forward, and backward's dinp and dweight)
            into preallocated buffers: the floor for any NumPy implementation of the step
The processes take turns, one step each (the order rotating), so a busy machine slows all of them
alike; the table gives each one's median over the timed steps, after one warm-up step (which allocates
the gradients and the optimizer state), with the forward / backward / update split.
Not here: GPU timing (bench/gpu.py).
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------------------- workers
def _tokens(V, B, T):
    tokens = np.random.default_rng(0).integers(0, V, size=(B, T + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def _layer_sizes(name):
    """(L, NH, C) of a dN descriptor, without importing llmnp (the torch worker may not have it)."""
    table = {"d12": (12, 12, 768), "d24": (24, 16, 1024), "d36": (36, 20, 1280), "d48": (48, 25, 1600)}
    if name in table:
        return table[name]
    L = int(name[1:])
    return L, L, 64 * L


def llmnp_step_fn(config_name, B, T):
    sys.path.insert(0, ROOT)
    from llmnp import GPT2, GPT2Config
    model = GPT2(GPT2Config.preset(config_name), seed=0)
    x, y = _tokens(model.config.vocab_size, B, T)
    step = 0

    def run():
        nonlocal step
        step += 1
        t0 = time.perf_counter()
        model.forward(x, y)
        t1 = time.perf_counter()
        model.zero_grad()
        model.backward()
        t2 = time.perf_counter()
        norm = model.grad_norm()
        model.update(1e-4, 0.9, 0.95, 1e-8, 0.1, step, grad_scale=min(1.0, 1.0 / max(norm, 1e-6)))
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2
    return run


def torch_step_fn(config_name, B, T, threads):
    import math
    import torch
    from torch import nn
    from torch.nn import functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    L, NH, C = _layer_sizes(config_name)
    V = 50257

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))   # (B,NH,T,hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(1024, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.lm_head = nn.Linear(C, V, bias=False)
            self.lm_head.weight = self.wte.weight             # tied, as GPT-2
            for name, p in self.named_parameters():           # llm.c's init
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, std=std)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

    model = GPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    x, y = (torch.from_numpy(a.astype(np.int64)) for a in _tokens(V, B, T))

    def run():
        t0 = time.perf_counter()
        loss = model(x, y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2
    return run


def products_step_fn(config_name, B, T):
    """NumPy's products of one step, nothing else: out = inp @ W^T forward; dinp = dout @ W and
    dW = dout^T @ inp backward, each written (not added) into its own preallocated buffer."""
    L, NH, C = _layer_sizes(config_name)
    N, Vp = B * T, 50304
    rng = np.random.default_rng(0)
    shapes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * L + [(Vp, C)]     # (out, in) weights
    weights = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in shapes]
    dweights = [np.zeros_like(w) for w in weights]
    inps = [rng.standard_normal((N, w.shape[1]), dtype=np.float32) for w in weights]
    outs = [np.zeros((N, w.shape[0]), np.float32) for w in weights]

    def run():
        t0 = time.perf_counter()
        for w, inp, out in zip(weights, inps, outs):
            np.matmul(inp, w.T, out=out)
        t1 = time.perf_counter()
        for w, dw, inp, dout in zip(weights, dweights, inps, outs):
            np.matmul(dout, w, out=inp)
            np.matmul(dout.T, inp, out=dw)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, 0.0
    return run


def worker(args):
    """One implementation in this process: a step per 'step' line read, its times as a JSON line."""
    if args.worker == "llmnp":
        run = llmnp_step_fn(args.config, args.batch, args.seq)
    elif args.worker == "torch":
        run = torch_step_fn(args.config, args.batch, args.seq, args.threads)
    else:
        run = products_step_fn(args.config, args.batch, args.seq)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        fwd, bwd, upd = run()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB -> bytes (Linux)
        print(json.dumps({"fwd": fwd, "bwd": bwd, "update": upd, "rss": rss}), flush=True)


# ---------------------------------------------------------------------------------------- parent
def has_torch(python):
    try:
        return subprocess.run([python, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Process:
    def __init__(self, python, impl, args, config):
        cmd = [python, os.path.abspath(__file__), "--worker", impl, "--config", config,
               "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
        self.impl = impl
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.results = []

    def wait_ready(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.impl} worker exited before it was ready")

    def step(self):
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.impl} worker exited during a step")
        self.results.append(json.loads(line))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def bench_config(config, args, torch_python):
    impls = [("llmnp", sys.executable), ("products", sys.executable)]
    if torch_python:
        impls.insert(1, ("torch", torch_python))
    procs = [Process(python, impl, args, config) for impl, python in impls]
    try:
        for p in procs:
            p.wait_ready()
        for i in range(args.steps + 1):               # step 0 is the warm-up
            k = i % len(procs)
            for p in procs[k:] + procs[:k]:
                p.step()
    finally:
        for p in procs:
            p.close()
    rows = {}
    for p in procs:
        timed = p.results[1:]
        med = {key: 1000 * float(np.median([r[key] for r in timed])) for key in ("fwd", "bwd", "update")}
        med["step"] = 1000 * float(np.median([r["fwd"] + r["bwd"] + r["update"] for r in timed]))
        med["rss"] = p.results[-1]["rss"] / 2 ** 30
        rows[p.impl] = med
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["d6", "d12"], help="model descriptors (dN)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per implementation (median reported)")
    parser.add_argument("--batch", "-b", type=int, default=4)
    parser.add_argument("--seq", "-t", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch's intra-op threads")
    parser.add_argument("--torch-python", default=None,
                        help="a Python interpreter that has torch (default: this one, if it has)")
    parser.add_argument("--worker", choices=["llmnp", "torch", "products"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    torch_python = args.torch_python or sys.executable
    if not has_torch(torch_python):
        print(f"torch: not importable by {torch_python}; its rows are skipped (--torch-python PATH)")
        torch_python = None
    version = lambda py, mod: subprocess.run([py, "-c", f"import {mod}; print({mod}.__version__)"],   # noqa: E731
                                             capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy "
          f"{np.__version__}" + (f", torch {version(torch_python, 'torch')} ({args.threads} threads)"
                                  if torch_python else ""))
    print(f"B={args.batch} T={args.seq} float32, {args.steps} timed steps each, interleaved, medians in ms; "
          f"load average at the start {os.getloadavg()[0]:.1f}")
    print()
    print("| config | impl     | ms/step |  tok/s | forward | backward | update | peak RSS (GiB) |")
    print("|--------|----------|---------|--------|---------|----------|--------|----------------|")
    tokens, ratios = args.batch * args.seq, []
    for config in args.configs:
        rows = bench_config(config, args, torch_python)
        for impl, r in rows.items():
            print(f"| {config:<6} | {impl:<8} | {r['step']:7.0f} | {tokens / r['step'] * 1000:6.0f} | "
                  f"{r['fwd']:7.0f} | {r['bwd']:8.0f} | {r['update']:6.0f} | {r['rss']:14.2f} |", flush=True)
        if "torch" in rows:
            ratios.append((config, rows["llmnp"]["step"] / rows["torch"]["step"],
                           rows["llmnp"]["rss"] / rows["torch"]["rss"]))
    for config, time_ratio, rss_ratio in ratios:
        print(f"{config}: llmnp / torch = {time_ratio:.2f}x the time, {rss_ratio:.2f}x the peak RSS")
    print(f"load average at the end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores: above that, other "
          f"processes shared the machine)")


if __name__ == "__main__":
    main()
