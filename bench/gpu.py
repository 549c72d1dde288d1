"""GPU training speed: llmnp's CUDA backend against the same model in PyTorch, one table.

    python bench/gpu.py                              # d12, T=1024, B in 4 16 64, fp32 and bf16, both
    python bench/gpu.py --batch 64 --dtype bf16      # a subset
    python bench/gpu.py -e d48 --batch 8 --dtype bf16 --impl llmnp torch.compile -r 1   # a bigger GPT-2
    python bench/gpu.py --row llmnp bf16 64          # one row, printed as JSON (what the table runs)

A step is what train_gpt2.py does per optimizer step with no gradient accumulation: forward with loss,
zero_grad, backward, global grad norm (clip at 1.0), AdamW, and the loss read on the host. Each row
runs in its own process (fresh GPU memory, an out-of-memory row does not end the table): warm-up
steps, then the median of timed steps (host clock around a synchronized step). tok/s = B*T / step.
MFU = llm.c's flops per token (6 N + 6 L C T) * tokens / s over the H100 SXM dense bf16 peak (989
TFLOP/s) for every row, so fp32 rows read low by design. Peak GPU memory = the most cudaMemGetInfo
showed in use (what nvidia-smi shows, CUDA context included).

PyTorch: the same GPT-2 (tied wte, tanh GELU, Vp = 50304 logits) with flash attention
(scaled_dot_product_attention), fused AdamW, clip_grad_norm_; bf16 = autocast over fp32 weights
(llm.c's train_gpt2.py); fp32 with TF32 off; "torch.compile" rows compile the model first.
Not here: correctness (tests/test_cuda.py), multi-GPU.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_BF16 = 989e12        # H100 SXM dense bf16 (llm.c's figure)


def used_gib():
    import cupy
    free, total = cupy.cuda.runtime.memGetInfo()
    return (total - free) / 2**30


def time_steps(step, sync, warmup, steps):
    peak = 0.0
    for t in range(1, warmup + 1):
        step(t)
    times = []
    for t in range(warmup + 1, warmup + steps + 1):
        sync()
        t0 = time.perf_counter()
        loss = step(t)
        sync()
        times.append(time.perf_counter() - t0)
        peak = max(peak, used_gib())
    return float(np.median(times)), peak, loss


def row_llmnp(dtype, B, T, warmup, steps, model_name, recompute):
    import cupy
    from llmnp import GPT2, GPT2Config
    from llmnp.adamw import BETA1, BETA2, EPS
    model = GPT2(GPT2Config.preset(model_name), device="cuda", dtype={"fp32": np.float32, "bf16": "bfloat16"}[dtype],
                 seed=0, recompute=recompute)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=(B, T + 1)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step(t):
        model.zero_grad()
        loss = model.forward_backward(x, y)
        norm = model.grad_norm()
        model.update(6e-4, BETA1, BETA2, EPS, 0.1, t, grad_scale=min(1.0, 1.0 / max(norm, 1e-12)))
        return float(loss)

    sec, peak, loss = time_steps(step, cupy.cuda.Device().synchronize, warmup, steps)
    return sec, peak, loss, model.flops_per_token(T)


def row_torch(dtype, B, T, warmup, steps, compile_model, model_name):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from llmnp import GPT2Config
    from llmnp.adamw import BETA1, BETA2, EPS
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = GPT2Config.preset(model_name)
    L, NH, C, V, maxT = config.num_layers, config.num_heads, config.channels, config.padded_vocab_size, config.max_seq_len

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            Bx, Tx, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (a.view(Bx, Tx, NH, C // NH).transpose(1, 2) for a in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(Bx, Tx, C)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(maxT, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            for mod in self.modules():                 # GPT-2's init, as llmnp's (loss starts near ln V)
                if isinstance(mod, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(mod.weight, std=0.02)
                if isinstance(mod, nn.Linear):
                    nn.init.zeros_(mod.bias)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)
            return F.cross_entropy(logits.float().view(-1, V), targets.view(-1))

    torch.manual_seed(0)
    model = GPT().cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(BETA1, BETA2), eps=EPS, fused=True)
    fwd = torch.compile(model) if compile_model else model
    x = torch.randint(0, 50257, (B, T), device="cuda")
    y = torch.randint(0, 50257, (B, T), device="cuda")

    def step(t):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    n_params = sum(p.numel() for p in model.parameters())
    sec, peak, loss = time_steps(step, torch.cuda.synchronize, warmup, steps)
    return sec, peak, loss, 6 * n_params + 6 * L * C * maxT


def run_row(impl, dtype, B, T, warmup, steps, model_name="d12", recompute=0):
    if impl == "llmnp":
        sec, peak, loss, fpt = row_llmnp(dtype, B, T, warmup, steps, model_name, recompute)
    else:
        sec, peak, loss, fpt = row_torch(dtype, B, T, warmup, steps, impl == "torch.compile", model_name)
    tok = B * T / sec
    return dict(model=model_name, impl=impl, dtype=dtype, B=B, T=T, ms=1000 * sec, tok_s=tok,
                mfu=fpt * tok / PEAK_BF16, peak_gib=peak, loss=loss)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", nargs=3, metavar=("IMPL", "DTYPE", "B"), help="run one row, print JSON")
    p.add_argument("--batch", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--impl", nargs="+", default=["llmnp", "torch", "torch.compile"],
                   choices=["llmnp", "torch", "torch.compile"])
    p.add_argument("--compile-batch", type=int, nargs="+", default=[64],
                   help="batch sizes with a torch.compile row (bf16 only; compiling takes a minute)")
    p.add_argument("-t", "--seq-len", type=int, default=1024)
    p.add_argument("-e", "--model", default="d12", help="GPT-2 descriptor: d12, d24, d36, d48")
    p.add_argument("-r", "--recompute", type=int, default=0, choices=(0, 1, 2),
                   help="llmnp's recompute (train_gpt2.py -r): 1 GELU, 2 GELU and layernorms")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.row:
        impl, dtype, B = args.row
        print(json.dumps(run_row(impl, dtype, int(B), args.seq_len, args.warmup, args.steps, args.model,
                                 args.recompute)))
        return
    rows = []
    for dtype in args.dtype:
        for B in args.batch:
            for impl in args.impl:
                if impl == "torch.compile" and (dtype != "bf16" or B not in args.compile_batch):
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--row", impl, dtype, str(B),
                       "-t", str(args.seq_len), "--warmup", str(args.warmup), "--steps", str(args.steps),
                       "-e", args.model, "-r", str(args.recompute)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
                if r.returncode == 0 and line.startswith("{"):
                    rows.append(json.loads(line))
                else:
                    err = (r.stderr.strip().splitlines() or ["?"])[-1]
                    rows.append(dict(model=args.model, impl=impl, dtype=dtype, B=B, T=args.seq_len, error=err[:90]))
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))


def table(rows):
    lines = ["| model | impl | dtype | B | T | ms/step | tok/s | MFU | peak GiB | loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['impl']} | {r['dtype']} | {r['B']} | {r['T']} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |||||")
        else:
            lines.append(f"{head} {r['ms']:.1f} | {r['tok_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['peak_gib']:.1f} | "
                         f"{r['loss']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
