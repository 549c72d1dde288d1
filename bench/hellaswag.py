"""HellaSwag scoring speed: examples per second of llmnp.hellaswag.evaluate on a d12 model.

    python bench/hellaswag.py --device cuda          # 10,042 synthetic examples, bf16, B=512
    python bench/hellaswag.py --device cuda --dtype bfloat16 float32 -b 64
    python bench/hellaswag.py --device cpu --examples 40

The real validation set cannot be fetched everywhere, so the file is synthetic with HellaSwag's shape:
10,042 examples of 4 endings, contexts of 20-100 tokens and endings of 10-40 (random ids, random
labels; accuracy is ~25% by construction and is printed only as a sanity check). The model is a random
d12: the speed of scoring does not depend on the weights.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmnp import GPT2, GPT2Config  # noqa: E402
from llmnp.hellaswag import evaluate, write_eval_file  # noqa: E402


def synthetic_eval_file(path, n, seed=0):
    rng = np.random.default_rng(seed)
    tok = lambda lo, hi: rng.integers(0, 50257, size=rng.integers(lo, hi + 1)).tolist()   # noqa: E731
    write_eval_file(path, [dict(label=int(rng.integers(4)), ctx_tokens=tok(20, 100),
                                ending_tokens=[tok(10, 40) for _ in range(4)]) for _ in range(n)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--examples", type=int, default=10042)
    parser.add_argument("-b", "--batch", type=int, default=None, help="rows per forward (B // 4 examples) [512 on the GPU, 16 on the CPU]")
    parser.add_argument("--dtype", nargs="+", default=None, help="[bfloat16 on the GPU, float32 on the CPU]")
    args = parser.parse_args()
    args.batch = args.batch or (512 if args.device == "cuda" else 16)
    dtypes = args.dtype or (["bfloat16"] if args.device == "cuda" else ["float32"])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hellaswag_synthetic.bin")
        synthetic_eval_file(path, args.examples)
        print(f"d12 (random), {args.examples} synthetic HellaSwag-shaped examples, B={args.batch}, {args.device}")
        print("| dtype | seconds | examples/s | accuracy (random model) |")
        print("|-------|---------|------------|-------------------------|")
        for dtype in dtypes:
            model = GPT2(GPT2Config.preset("d12"), device=args.device, dtype=dtype, seed=0)
            model.forward(np.zeros((args.batch, 140), np.int32))    # allocate for the longest row (139); compile
            evaluate(model, path, B=args.batch, limit=args.batch // 4)          # warm-up
            sync = (lambda: __import__("cupy").cuda.Device().synchronize()) if args.device == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            correct, total = evaluate(model, path, B=args.batch)     # reading the file included
            dt = time.perf_counter() - t0
            print(f"| {dtype} | {dt:.2f} | {total / dt:,.0f} | {correct / total:.3f} |", flush=True)
            del model


if __name__ == "__main__":
    main()
