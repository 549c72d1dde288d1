"""Generation speed: llmnp's KV-cache decoding against transformers' generate (PyTorch, KV cache) on the
same weights, in the same run, on the same device. Prints a table.

    python bench/generate.py                                  # GPU rows (d12, d48) and the CPU row
    python bench/generate.py --models d12 --skip-cpu
    python bench/generate.py --gpu-rows none --cpu-tokens 16  # the CPU row only

Each model is a random llm.c-initialized GPT-2 (speed does not depend on the weights), written by
llmnp.export's writer (checkpoint.save_hf) and read by AutoModelForCausalLM, so both sides run the same
numbers. Greedy decoding of a fixed number of new tokens after an 8-token prompt (no stopping at EOT on
either side: min_new_tokens for transformers, eot=-1 for llmnp); the time of a whole call, prompt
included, after a warm-up call of the same length (transformers' bf16 attention goes to cuDNN, which
builds a plan for each new sequence length: the first call at a length is several times slower); ms/token = time / new tokens, tokens/s = rows * new tokens / time.
'agree' is how many of the first 32 greedy tokens of row 0 are the same on both sides (bf16 rounding
can make random weights' near-ties go either way).
Not here: sampling speed (llmnp samples on the GPU too; transformers' sampler differs), long prompts.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmnp import GPT2, GPT2Config  # noqa: E402
from llmnp.checkpoint import save_hf  # noqa: E402
from llmnp.generate import generate, generate_many  # noqa: E402

PROMPT = 8


def prompts(rows, seed=0):
    return np.random.default_rng(seed).integers(0, 50257, (rows, PROMPT)).tolist()


def time_llmnp(model, rows, new, sync):
    ps = prompts(rows)
    run = (lambda n: [list(generate(model, ps[0], n, temperature=0, eot=-1))]) if rows == 1 else \
        (lambda n: generate_many(model, ps, n, temperature=0, eot=-1))
    run(new)                                                   # warm-up: kernels compile
    sync()
    t0 = time.perf_counter()
    out = run(new)
    sync()
    return time.perf_counter() - t0, out[0]


def time_transformers(hf, rows, new, device, sync):
    import torch
    x = torch.tensor(prompts(rows), dtype=torch.long, device=device)
    mask = torch.ones_like(x)

    def run(n):
        with torch.no_grad():
            return hf.generate(x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=50256)
    run(new)                          # warm-up at every length: cuDNN's attention builds a plan per length
    sync()
    t0 = time.perf_counter()
    out = run(new)
    sync()
    return time.perf_counter() - t0, out[0, PROMPT:].tolist()


def bench_model(name, device, dtypes_rows, new_tokens, table):
    """Rows of the table for one model size on one device: [(dtype, rows)] each timed on both sides."""
    import torch
    from transformers import AutoModelForCausalLM
    config = GPT2Config.preset(name)
    host = GPT2(config, device="cpu", seed=0)                   # llm.c's init, drawn on the host
    flat = host.parameters_to_host()
    del host
    if device == "cuda":
        import cupy as cp
        sync = lambda: (cp.cuda.Device().synchronize(), torch.cuda.synchronize())   # noqa: E731
    else:
        sync = lambda: None                                                         # noqa: E731
    loaded = {}                                                 # dtype -> (llmnp model, transformers model)
    with tempfile.TemporaryDirectory() as d:
        save_hf(d, config, flat)
        for dtype, rows in dtypes_rows:
            if dtype not in loaded:
                loaded.clear()
                if device == "cuda":
                    torch.cuda.empty_cache()
                    cp.get_default_memory_pool().free_all_blocks()
                model = GPT2(config, device=device, dtype=dtype, init=False)
                model.load_parameters(flat)
                torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
                hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).to(device).eval()
                loaded[dtype] = model, hf
            model, hf = loaded[dtype]
            new = new_tokens if rows == 1 else max(new_tokens // 2, 1)
            ours, our_tokens = time_llmnp(model, rows, new, sync)
            theirs, their_tokens = time_transformers(hf, rows, new, device, sync)
            agree = next((i for i, (x, y) in enumerate(zip(our_tokens[:32], their_tokens[:32])) if x != y),
                         min(32, len(our_tokens)))
            table.append((name, device, dtype, rows, new, ours, theirs, agree))
            print_row(table[-1], flush=True)
        loaded.clear()


def print_row(r, flush=False):
    name, device, dtype, rows, new, ours, theirs, agree = r
    if rows == 1:
        speed = f"{1e3 * ours / new:.2f} ms | {1e3 * theirs / new:.2f} ms"
    else:
        speed = f"{rows * new / ours:,.0f} tok/s | {rows * new / theirs:,.0f} tok/s"
    print(f"| {name} | {device} | {dtype} | {rows} | {new} | {speed} | {theirs / ours:.1f}x | {agree}/32 |", flush=flush)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["d12", "d48"])
    parser.add_argument("--gpu-rows", default="all", choices=["all", "none"])
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per row at batch 1 (half at 64) [256]")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--cpu-tokens", type=int, default=32, help="new tokens in the CPU row [32]")
    args = parser.parse_args()
    import torch
    import transformers
    print(f"llmnp vs transformers {transformers.__version__} (torch {torch.__version__}) generate, greedy, "
          f"{PROMPT}-token prompt; CPU threads: numpy's default, torch {torch.get_num_threads()}")
    print("| model | device | dtype | batch | new tokens | llmnp | transformers | speed-up | agree |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    table = []
    if args.gpu_rows == "all" and torch.cuda.is_available():
        for name in args.models:
            rows = [("bfloat16", 1), ("bfloat16", args.batch)]
            if name == "d12":
                rows.insert(1, ("float32", 1))
            bench_model(name, "cuda", rows, args.tokens, table)
    if not args.skip_cpu:
        bench_model("d12", "cpu", [("float32", 1)], args.cpu_tokens, table)


if __name__ == "__main__":
    main()
