"""Where a GPU training step spends its time: every backend call (and each cuBLAS product) timed with
CUDA events over one step of d12, after warm-up steps. A dev tool, not part of the package.

    python dev/cuda/profile_step.py --dtype bf16 -b 64 -t 1024
"""
import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("-b", type=int, default=64)
    p.add_argument("-t", type=int, default=1024)
    p.add_argument("-e", default="d12")
    p.add_argument("--kernels", action="store_true", help="also time every kernel launch")
    args = p.parse_args()
    import cupy as cp
    from llmnp import GPT2, GPT2Config
    from llmnp.adamw import BETA1, BETA2, EPS
    from llmnp import cuda as ops
    from llmnp.cuda import matmul, runtime
    model = GPT2(GPT2Config.preset(args.e), device="cuda", dtype={"fp32": np.float32, "bf16": "bfloat16"}[args.dtype])
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 50257, size=(args.b, args.t + 1)).astype(np.int32)
    x, y = tok[:, :-1], tok[:, 1:]
    records = []

    def timed(name, fn):
        def wrapper(*a, **k):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            r = fn(*a, **k)
            end.record()
            records.append((name, start, end))
            return r
        return wrapper

    class Timed:
        pass
    timed_ops = Timed()
    for name in ops.__all__:
        setattr(timed_ops, name, timed(name, getattr(ops, name)) if name != "xp" else ops.xp)
    matmul.gemm = timed("  cublas gemm", runtime.gemm)
    if args.kernels:                      # every RawKernel launch by kernel name, indented under its op,
        import importlib                  # and each cuBLAS product by its (column-major) m x n x k

        def gemm_by_shape(c, a, b, m, n, k, *rest, **kw):
            return timed(f"  cublas gemm {m}x{n}x{k}", runtime.gemm)(c, a, b, m, n, k, *rest, **kw)
        matmul.gemm = gemm_by_shape

        class TimedKernel:
            def __init__(self, k, name):
                object.__setattr__(self, "k", k)
                object.__setattr__(self, "call", timed("  " + name, k))

            def __call__(self, *a, **kw):
                return self.call(*a, **kw)

            def __setattr__(self, attr, value):
                setattr(self.k, attr, value)

            def __getattr__(self, attr):
                return getattr(self.k, attr)

        for mod in ("encoder", "layernorm", "matmul", "attention", "gelu", "residual", "classifier", "adamw"):
            m = importlib.import_module("llmnp.cuda." + mod)
            m.kernel = lambda *a, _k=runtime.kernel, **kw: TimedKernel(_k(*a, **kw), a[1])

    def step(t):
        model.zero_grad()
        loss = model.forward_backward(x, y)
        norm = model.grad_norm()
        model.update(6e-4, BETA1, BETA2, EPS, 0.1, t, grad_scale=min(1.0, 1.0 / norm))
        return float(loss)

    for t in range(1, 4):
        step(t)
    model.ops = timed_ops
    cp.cuda.Device().synchronize()
    records.clear()
    s0, s1 = cp.cuda.Event(), cp.cuda.Event()
    s0.record()
    step(4)
    s1.record()
    s1.synchronize()
    total = cp.cuda.get_elapsed_time(s0, s1)
    acc = collections.defaultdict(lambda: [0.0, 0])
    for name, a, b in records:
        acc[name][0] += cp.cuda.get_elapsed_time(a, b)
        acc[name][1] += 1
    print(f"d12 {args.dtype} B={args.b} T={args.t}: step {total:.1f} ms")
    for name, (ms, n) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        rate = ""
        if name.startswith("  cublas gemm "):             # 2 m n k flops a call
            m, n_, k = (int(v) for v in name.split()[-1].split("x"))
            rate = f"  {2 * m * n_ * k * n / ms / 1e9:5.0f} TFLOP/s"
        print(f"{name:34s} {ms:8.2f} ms {100 * ms / total:5.1f}%  ({n} calls){rate}")


if __name__ == "__main__":
    main()
