"""Kernel variants side by side: each one checked against the NumPy reference (float64) at a small
shape, then timed at GPT-2 d12's training shape, so that every mainline choice can be reproduced.
A dev tool, not part of the package; the measured tables are in dev/cuda/README.md.

    python dev/cuda/variants.py                  # every family
    python dev/cuda/variants.py attention        # one family

A variant is a function that runs the kernels on CuPy arrays like the mainline launcher does. The
mainline launchers are variants too (marked *); the others live in dev/cuda/*.cu files, which include
their family's .cu file, or are the mainline kernels built with other -D choices.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
DEV = os.path.dirname(os.path.abspath(__file__))

import cupy as cp                                       # noqa: E402

from llmnp import attention as ref                      # noqa: E402
from llmnp import gelu as gelu_ref_module               # noqa: E402
from llmnp.cuda import attention as att                 # noqa: E402
from llmnp.cuda.runtime import blocks, compile_options, kernel, scratch   # noqa: E402
from llmnp.model import storage_dtype                   # noqa: E402

BF16 = storage_dtype("bfloat16")


def dev_kernel(file, name, dtype, arch=None, **defines):
    """Kernel `name` of dev/cuda/<file>.cu (which may include llmnp/cuda's files: compile_options puts
    that folder on the include path); arch: a target such as sm_90a (wgmma), else CuPy's default."""
    with open(os.path.join(DEV, file + ".cu")) as f:
        code = f.read()
    options = compile_options(np.dtype(dtype) == BF16, tuple(sorted(defines.items())))
    if arch:
        options += (f"-arch={arch}",)
    return cp.RawModule(code=code, options=options).get_function(name)


# ------------------------------------------------------------------------------------------ attention
def attention_inputs(B, T, NH, hs, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = NH * hs
    qkv = cp.asarray(rng.standard_normal((B, T, 3 * C)).astype(dtype))
    dout = cp.asarray(rng.standard_normal((B, T, C)).astype(dtype))
    out, lse = cp.empty((B, T, C), dtype), cp.empty((B, NH, T), np.float32)
    dqkv = cp.empty((B, T, 3 * C), dtype)
    att.attention_forward(out, lse, qkv)
    return dict(qkv=qkv, dout=dout, out=out, lse=lse, dqkv=dqkv)


def backward_split(dqkv, dout, qkv, out, lse):
    """dev/cuda/attention_split.cu: dk/dv, then dq, each recomputing P and dP; no atomics."""
    B, T, C3 = qkv.shape
    NH = lse.shape[1]
    hs = C3 // 3 // NH
    sizes = (np.int32(B), np.int32(T), np.int32(NH))
    D = scratch("attention_D", B * NH * T)
    att.rowdot(D, None, dout, out, NH)
    smem = att.tile_smem(hs, 4, 4 * att.ROWS)
    for name in ("attention_backward_dkdv_mma", "attention_backward_dq_mma"):
        k = dev_kernel("attention_split", name, dqkv.dtype, HS=hs)
        k.max_dynamic_shared_size_bytes = smem
        k((blocks(T, att.ROWS), B * NH), (128,), (dqkv, dout, qkv, lse, D) + sizes, shared_mem=smem)


def backward_fused_blocks(per_sm):
    """The mainline fused kernel with its registers budgeted for `per_sm` blocks per SM."""
    def run(dqkv, dout, qkv, out, lse):
        original = att.tensor_core_kernel

        def build(name, dtype, hs, smem):
            k = kernel("attention", name, dtype, HS=hs, BWD_BLOCKS=per_sm)
            k.max_dynamic_shared_size_bytes = smem
            return k
        att.tensor_core_kernel = build
        try:
            att.attention_backward(dqkv, dout, qkv, out, lse, tensor_cores=True)
        finally:
            att.tensor_core_kernel = original
    return run


ATTENTION_BACKWARD = [
    ("fp32 CUDA cores", lambda *a: att.attention_backward(*a, tensor_cores=False)),
    ("mma fused*", lambda *a: att.attention_backward(*a, tensor_cores=True)),
    ("mma fused, 2 blocks/SM", backward_fused_blocks(2)),
    ("mma fused, 3 blocks/SM", backward_fused_blocks(3)),
    ("mma split (dk/dv, dq)", backward_split),
]
def forward_wgmma(out, lse, qkv):
    """dev/cuda/attention_wgmma.cu: Hopper's warpgroup mma, head size 64 only."""
    B, T, C = out.shape
    NH = lse.shape[1]
    if C // NH != 64:
        raise NotImplementedError("head size 64 only")
    smem = (128 + 4 * 64) * 64 * 2 + 1024                  # Q, K and V twice, and room to align to 1024 bytes
    k = dev_kernel("attention_wgmma", "attention_forward_wgmma", out.dtype, arch="sm_90a", HS=64)
    k.max_dynamic_shared_size_bytes = smem
    k((blocks(T, 128), B * NH), (256,), (out, lse, qkv, np.int32(B), np.int32(T), np.int32(NH)),
      shared_mem=smem)


ATTENTION_FORWARD = [
    ("fp32 CUDA cores", lambda out, lse, qkv: att.attention_forward(out, lse, qkv, tensor_cores=False)),
    ("mma*", lambda out, lse, qkv: att.attention_forward(out, lse, qkv, tensor_cores=True)),
    ("wgmma (sm_90a)", forward_wgmma),
]


def relative_error(got, want):
    got = got.astype(np.float32).get().astype(np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def check_attention(B=2, T=200, NH=2, hs=64, dtype=BF16):
    """Each variant against llmnp/attention.py in float64 on the same (bf16-rounded) inputs."""
    x = attention_inputs(B, T, NH, hs, dtype)
    qkv_h = x["qkv"].astype(np.float32).get().astype(np.float64)
    dout_h = x["dout"].astype(np.float32).get().astype(np.float64)
    want, lse_h = np.empty(x["out"].shape), np.empty(x["lse"].shape)
    ref.attention_forward(want, lse_h, qkv_h)
    errors = {}
    for name, run in ATTENTION_FORWARD:
        out = cp.full_like(x["out"], np.nan)
        try:
            run(out, x["lse"], x["qkv"])
        except NotImplementedError:
            continue
        errors["forward", name] = relative_error(out, want)
    dwant = np.empty(qkv_h.shape)
    ref.attention_backward(dwant, dout_h, qkv_h, x["out"].astype(np.float32).get().astype(np.float64),
                           x["lse"].get().astype(np.float64))
    for name, run in ATTENTION_BACKWARD:
        dqkv = cp.full_like(x["dqkv"], np.nan)
        run(dqkv, x["dout"], x["qkv"], x["out"], x["lse"])
        errors["backward", name] = relative_error(dqkv, dwant)
    return errors


def time_ms(run, reps):
    run()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        run()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end)


def attention(shapes=((64, 1024, 12, 64), (16, 1024, 16, 128)), tol=2e-2):
    errors = check_attention()
    print("| attention variant | max rel. error vs NumPy | " + " | ".join(
        f"ms x12, B={B} T={T} NH={NH} hs={hs}" for B, T, NH, hs in shapes) + " |")
    print("|---|---|" + "---|" * len(shapes))
    inputs = [attention_inputs(*shape, BF16) for shape in shapes]
    for direction, variants in (("forward", ATTENTION_FORWARD), ("backward", ATTENTION_BACKWARD)):
        for name, run in variants:
            times = []
            for x in inputs:
                args = ((x["out"], x["lse"], x["qkv"]) if direction == "forward"
                        else (x["dqkv"], x["dout"], x["qkv"], x["out"], x["lse"]))
                try:
                    times.append(f"{time_ms(lambda: run(*args), 12):.2f}")
                except NotImplementedError:
                    times.append("-")
            err = errors.get((direction, name))
            flag = "-" if err is None else f"{err:.2e}" + ("" if err < tol else " FAILS")
            print(f"| {direction} {name} | {flag} | " + " | ".join(times) + " |")


# --------------------------------------------------------------------------------------------- matmul
# the three products whose epilogue does more than write the product: qkv's bias, fc's bias and GELU,
# and fcproj's backward through GELU; each as matmul.py (cuBLAS, then a kernel) and matmul_lt.py
def matmul_inputs(N, C, dtype, seed=0):
    rng = np.random.default_rng(seed)
    host = dict(inp=rng.standard_normal((N, C)), w=0.05 * rng.standard_normal((4 * C, C)),
                b=0.1 * rng.standard_normal(4 * C), dres=rng.standard_normal((N, C)),
                wp=0.05 * rng.standard_normal((C, 4 * C)), pre=rng.standard_normal((N, 4 * C)))
    dev = {k: cp.asarray(v.astype(dtype)) for k, v in host.items()}
    host = {k: v.get().astype(np.float64) for k, v in dev.items()}       # the reference sees the rounded values
    dev.update(out=cp.empty((N, 4 * C), dtype), pre_out=cp.empty((N, 4 * C), dtype),
               dinp=cp.empty((N, 4 * C), dtype), dwp=cp.zeros((C, 4 * C), dtype), dbp=cp.zeros(C, dtype))
    return dev, host


def matmul_ops(module):
    """(name, run(x), output key, NumPy float64 reference of that output from host inputs h)."""
    return [
        ("forward + bias", lambda x: module.matmul_forward(x["out"], x["inp"], x["w"], x["b"]), "out",
         lambda h: h["inp"] @ h["w"].T + h["b"]),
        ("forward + bias + GELU", lambda x: module.matmul_gelu_forward(x["out"], x["pre_out"], x["inp"], x["w"], x["b"]),
         "out", lambda h: gelu_ref(h["inp"] @ h["w"].T + h["b"])),
        ("backward through GELU", lambda x: module.matmul_backward(x["dinp"], x["dwp"], x["dbp"], x["dres"], x["out"],
                                                                   x["wp"], x["pre"]),
         "dinp", lambda h: dgelu_ref(h["dres"] @ h["wp"], h["pre"])),
    ]


def gelu_ref(x):
    out = np.empty_like(x)
    gelu_ref_module.gelu_forward(out, x)
    return out


def dgelu_ref(d, x):
    out = np.empty_like(x)
    gelu_ref_module.gelu_backward(out, x, d)
    return out


def matmul(shape=(64 * 1024, 768), tol=2e-2):
    from llmnp.cuda import matmul as plain, matmul_lt as lt
    small, host = matmul_inputs(200, 64, BF16)
    big, _ = matmul_inputs(*shape, BF16)
    print(f"| matmul variant | max rel. error vs NumPy | ms x12, N={shape[0]} C={shape[1]} (OC or in = 4C) |")
    print("|---|---|---|")
    for label, module in (("cuBLAS + kernel", plain), ("cuBLASLt epilogue*", lt)):
        for name, run, key, want in matmul_ops(module):
            run(small)
            err = relative_error(small[key], want(host))
            flag = "" if err < tol else " FAILS"
            print(f"| {name}, {label} | {err:.2e}{flag} | {time_ms(lambda: run(big), 12):.2f} |")


FAMILIES = {"attention": attention, "matmul": matmul}


def main():
    p = argparse.ArgumentParser(description="Kernel variants: checked against NumPy, then timed.")
    p.add_argument("families", nargs="*", help=f"some of: {', '.join(FAMILIES)} [all]")
    args = p.parse_args()
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        p.error(f"no variants for {', '.join(sorted(unknown))} (there are: {', '.join(FAMILIES)})")
    print(f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, bf16 inputs")
    for family in args.families or FAMILIES:
        FAMILIES[family]()


if __name__ == "__main__":
    main()
