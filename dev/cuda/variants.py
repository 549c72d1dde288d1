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
import functools
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
from llmnp.cuda.runtime import blocks, compile_options, dev_arch, hopper, kernel, scratch   # noqa: E402
from llmnp.model import storage_dtype                   # noqa: E402

BF16 = storage_dtype("bfloat16")


def dev_kernel(file, name, dtype, **defines):
    """Kernel `name` of dev/cuda/<file>.cu (which may include llmnp/cuda's files: compile_options puts
    that folder on the include path), built for the architecture of the files it includes."""
    with open(os.path.join(DEV, file + ".cu")) as f:
        code = f.read()
    options = compile_options(np.dtype(dtype) == BF16, tuple(sorted(defines.items())))
    arch = dev_arch(code)
    return cp.RawModule(code=code, options=options + ((f"-arch={arch}",) if arch else ())).get_function(name)


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

        def build(name, dtype, hs, smem, family="attention"):
            k = kernel(family, name, dtype, HS=hs, BWD_BLOCKS=per_sm)
            k.max_dynamic_shared_size_bytes = smem
            return k
        att.tensor_core_kernel = build
        try:
            att.attention_backward(dqkv, dout, qkv, out, lse, kernels="mma")
        finally:
            att.tensor_core_kernel = original
    return run


def wgmma_only(out, lse):
    """The wgmma kernels take head size 64 on a Hopper GPU only."""
    if out.shape[-1] // lse.shape[1] != 64 or not hopper():
        raise NotImplementedError("head size 64 on compute capability 9.0 only")


def forward_wgmma(out, lse, qkv):
    wgmma_only(out, lse)
    att.attention_forward(out, lse, qkv, kernels="wgmma")


def backward_wgmma(dqkv, dout, qkv, out, lse):
    wgmma_only(out, lse)
    att.attention_backward(dqkv, dout, qkv, out, lse, kernels="wgmma")


def backward_wgmma_64keys(dqkv, dout, qkv, out, lse):
    """dev/cuda/attention_hopper_64keys.cu: one warpgroup per 64 keys, three blocks per SM, each copying
    its own query tiles and adding its own dq."""
    wgmma_only(out, lse)
    B, T, C3 = qkv.shape
    NH = lse.shape[1]
    sizes = (np.int32(B), np.int32(T), np.int32(NH))
    D, dq_acc = scratch("attention_D", B * NH * T), scratch("attention_dq", B * T * C3 // 3)
    att.rowdot(D, dq_acc, dout, out, NH)
    smem = 7 * 8192 + 4 * att.ROWS * 4 + 1024          # K, V, Q | dO double-buffered, dS^T; lse, D twice
    k = dev_kernel("attention_hopper_64keys", "attention_backward_wgmma_64keys", dqkv.dtype, HS=64)
    k.max_dynamic_shared_size_bytes = smem
    k((blocks(T, att.ROWS), B * NH), (128,), (dqkv, dq_acc, dout, qkv, lse, D) + sizes, shared_mem=smem)
    att.dq_store(dqkv, dq_acc, None, NH)


ATTENTION_BACKWARD = [
    ("fp32 CUDA cores", lambda *a: att.attention_backward(*a, kernels="fp32")),
    ("mma fused (the portable path)", lambda *a: att.attention_backward(*a, kernels="mma")),
    ("mma fused, 2 blocks/SM", backward_fused_blocks(2)),
    ("mma fused, 3 blocks/SM", backward_fused_blocks(3)),
    ("mma split (dk/dv, dq)", backward_split),
    ("wgmma, a warpgroup per 64 keys", backward_wgmma_64keys),
    ("wgmma, warp-specialized, 128 keys* (attention_hopper.cu)", backward_wgmma),
]
ATTENTION_FORWARD = [
    ("fp32 CUDA cores", lambda out, lse, qkv: att.attention_forward(out, lse, qkv, kernels="fp32")),
    ("mma (the portable path)", lambda out, lse, qkv: att.attention_forward(out, lse, qkv, kernels="mma")),
    ("wgmma* (attention_hopper.cu)", forward_wgmma),
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
        try:
            run(dqkv, x["dout"], x["qkv"], x["out"], x["lse"])
        except NotImplementedError:
            continue
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


# ------------------------------------------------------------------------------------------- membound
# three memory-bound kernels at d12's training shape: the residual add fused with the layernorm after it,
# the layernorm backward (dinp, then dweight | dbias from per-block partial rows), and the matmul's dbias
# (per-block column sums, then their total); each as the mainline launcher (*) and with the earlier form
# of its row kernel, dev/cuda/membound_plain.cu. moved: the bytes each must read and write at least.
@functools.lru_cache(maxsize=None)
def plain_kernel(name, dtype, file="membound_plain"):
    """A kernel of dev/cuda/<file>.cu, built once (building it in each timed call would time the host,
    not the kernel)."""
    return dev_kernel(file, name, dtype)


def residual_layernorm_plain(residual, out, mean, rstd, inp, proj, proj_bias, weight, bias):
    C = inp.shape[-1]
    N = inp.size // C
    k = plain_kernel("residual_layernorm_forward_plain", out.dtype)
    k((blocks(N, 8),), (256,),
      (residual, out, mean, rstd, inp, proj, proj_bias, weight, bias, np.int32(N), np.int32(C)))


def layernorm_backward_plain(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    from llmnp.cuda.runtime import num_sms, pack
    C = inp.shape[-1]
    N = inp.size // C
    grid = min(blocks(N, 4), 8 * num_sms())
    partial = scratch("layernorm_partial", grid * 2 * C)
    chunk = 32 * pack(dinp.dtype)
    smem = 4 * 2 * blocks(C, chunk) * chunk * 4
    k = plain_kernel("layernorm_backward_rows_plain", dinp.dtype)
    k.max_dynamic_shared_size_bytes = smem
    k((grid,), (128,), (dinp, partial, dout, inp, weight, mean, rstd, np.int32(N), np.int32(C)), shared_mem=smem)
    k = plain_kernel("layernorm_backward_dweight_dbias_plain", dinp.dtype)
    k((blocks(2 * C, 256),), (256,), (dweight, dbias, partial, np.int32(grid), np.int32(C)))


def matmul_dbias_plain(dbias, dout):
    from llmnp.cuda.runtime import num_sms, pack
    OC = dbias.size
    N = dout.size // OC
    col_blocks = blocks(OC, 32 * pack(dout.dtype))
    R = max(1, min(blocks(N, 64), blocks(4 * num_sms(), col_blocks)))
    partial = scratch("matmul_partial", R * OC)
    k = plain_kernel("matmul_backward_dbias_partial_plain", dout.dtype)
    k((col_blocks, R), (32, 8), (partial, dout, np.int32(N), np.int32(OC)))
    k = plain_kernel("matmul_backward_dbias_total_plain", dout.dtype)
    k((blocks(OC, 256),), (256,), (dbias, partial, np.int32(R), np.int32(OC)))


def membound_inputs(N, C, dtype, seed=0):
    """Device arrays for the layernorm ops at (N, C) and their float64 host copies (as rounded on the
    device); mean and rstd, the backward's inputs, from the NumPy forward (the forward writes its own
    into mean_out, rstd_out)."""
    from llmnp import layernorm as ref_ln
    rng = np.random.default_rng(seed)
    host = dict(inp=3 * rng.standard_normal((N, C)), proj=rng.standard_normal((N, C)), pb=rng.standard_normal(C),
                w=rng.standard_normal(C), b=rng.standard_normal(C), dout=rng.standard_normal((N, C)),
                dinp=rng.standard_normal((N, C)), dw=rng.standard_normal(C), db=rng.standard_normal(C),
                dpb=rng.standard_normal(C))
    dev = {k: cp.asarray(v.astype(dtype)) for k, v in host.items()}
    host = {k: v.astype(np.float32).get().astype(np.float64) for k, v in dev.items()}
    mean, rstd = np.empty(N), np.empty(N)
    ref_ln.layernorm_forward(np.empty((N, C)), mean, rstd, host["inp"], host["w"], host["b"])
    dev.update(mean=cp.asarray(mean.astype(np.float32)), rstd=cp.asarray(rstd.astype(np.float32)))
    host.update(mean=mean.astype(np.float32).astype(np.float64), rstd=rstd.astype(np.float32).astype(np.float64))
    dev.update(residual=cp.empty((N, C), dtype), out=cp.empty((N, C), dtype),
               mean_out=cp.empty(N, np.float32), rstd_out=cp.empty(N, np.float32))
    return dev, host


def membound_layernorm_ops():
    """(name, [(label, run(x))], error(x, h): max rel. error of the outputs vs NumPy)."""
    from llmnp import layernorm as ref_ln
    from llmnp.cuda import layernorm as ln

    def forward(launcher):
        return lambda x: launcher(x["residual"], x["out"], x["mean_out"], x["rstd_out"], x["inp"], x["proj"], x["pb"],
                                  x["w"], x["b"])

    def backward(launcher):
        return lambda x: launcher(x["dinp"], x["dw"], x["db"], x["dout"], x["inp"], x["w"], x["mean"], x["rstd"])

    def backward_pb(x):
        ln.layernorm_backward(x["dinp"], x["dw"], x["db"], x["dout"], x["inp"], x["w"], x["mean"], x["rstd"],
                              dproj_bias=x["dpb"])

    def forward_error(x, h):
        N, C = h["inp"].shape
        res, out, mean, rstd = np.empty((N, C)), np.empty((N, C)), np.empty(N), np.empty(N)
        ref_ln.residual_layernorm_forward(res, out, mean, rstd, h["inp"], h["proj"], h["pb"], h["w"], h["b"])
        return max(relative_error(x["residual"], res), relative_error(x["out"], out),
                   relative_error(x["mean_out"], mean), relative_error(x["rstd_out"], rstd))

    def backward_error(x, h):
        dinp, dw, db = h["dinp"].copy(), h["dw"].copy(), h["db"].copy()     # all three accumulate
        ref_ln.layernorm_backward(dinp, dw, db, h["dout"], h["inp"], h["w"], h["mean"], h["rstd"])
        return max(relative_error(x["dinp"], dinp), relative_error(x["dw"], dw), relative_error(x["db"], db))

    def backward_pb_error(x, h):
        dpb = h["dpb"] + host_f64(x["dinp"]).sum(axis=0)       # the rows of dinp as written
        return max(backward_error(x, h), relative_error(x["dpb"], dpb))

    return [("residual + layernorm forward", [("passes over the row", forward(residual_layernorm_plain)),
                                              ("row in registers*", forward(ln.residual_layernorm_forward))],
             forward_error),
            ("layernorm backward", [("passes over the row", backward(layernorm_backward_plain)),
                                    ("row in registers*", backward(ln.layernorm_backward))], backward_error),
            ("layernorm backward + the projection's dbias", [("row in registers*", backward_pb)], backward_pb_error)]


def host_f64(a):
    return a.astype(np.float32).get().astype(np.float64)


def membound(N=64 * 1024, C=768, dbias_oc=(768, 2304, 3072), tol=2e-2):
    """Each variant checked at small shapes (C a multiple of PACK, and not: the element-by-element
    paths), then timed for 12 calls at (N, C); GB/s from the bytes each call must move."""
    from llmnp.cuda.matmul import matmul_dbias
    dtype = BF16
    size = np.dtype(dtype).itemsize
    moved = 4 * N * C * size                  # both layernorm ops read two (N, C) arrays and write two
    print(f"| membound variant | max rel. error vs NumPy | ms x12, N={N} C={C} | us per call | GB/s |")
    print("|---|---|---|---|---|")
    src, dst = cp.empty(moved // 2 // size, dtype), cp.empty(moved // 2 // size, dtype)
    ms = time_ms(lambda: cp.copyto(dst, src), 12)
    print(f"| device copy of as many bytes (reference) | - | {ms:.2f} | {ms / 12 * 1e3:.1f} | "
          f"{moved * 12 / ms / 1e6:.0f} |")
    big, _ = membound_inputs(N, C, dtype)
    for name, variants, error in membound_layernorm_ops():
        for label, run in variants:
            err = 0.0
            for n, c in ((210, C), (70, 100), (33, 8)):
                small, host = membound_inputs(n, c, dtype, seed=1)
                run(small)
                err = max(err, error(small, host))
            ms = time_ms(lambda: run(big), 12)
            print(f"| {name}, {label} | {err:.2e}{'' if err < tol else ' FAILS'} | {ms:.2f} | {ms / 12 * 1e3:.1f} | "
                  f"{moved * 12 / ms / 1e6:.0f} |")
    print()
    print("| dbias variant | max rel. error vs NumPy | " + " | ".join(
        f"ms x12 (GB/s), N={N} OC={oc}" for oc in dbias_oc) + " |")
    print("|---|---|" + "---|" * len(dbias_oc))
    rng = np.random.default_rng(0)
    douts = [cp.asarray(rng.standard_normal((N, oc)).astype(dtype)) for oc in dbias_oc]
    for label, run in (("one row per thread at a time", matmul_dbias_plain), ("4 rows per thread*", matmul_dbias)):
        err = 0.0
        for n, oc in ((300, 768), (77, 50)):
            dout = cp.asarray(rng.standard_normal((n, oc)).astype(dtype))
            db = cp.asarray(rng.standard_normal(oc).astype(dtype))
            want = host_f64(db) + host_f64(dout).sum(axis=0)       # dbias accumulates
            run(db, dout)
            err = max(err, relative_error(db, want))
        times = []
        for dout in douts:
            db = cp.zeros(dout.shape[1], dtype)
            ms = time_ms(lambda: run(db, dout), 12)
            times.append(f"{ms:.2f} ({dout.nbytes * 12 / ms / 1e6:.0f})")
        print(f"| dbias, {label} | {err:.2e}{'' if err < tol else ' FAILS'} | " + " | ".join(times) + " |")


# ----------------------------------------------------------------------------------------- classifier
# the loss and dlogits in one kernel, as training runs it: d12's B*T = 65,536 rows of Vp = 50,304 logits in
# the model's eight blocks of 8,192 rows, dlogits written over the logits
def crossentropy_dev(name, strided):
    """A launcher for dev/cuda/classifier_plain.cu's kernel `name` (the mainline kernel's arguments, the row
    always cached): one block per row, or (strided) one wave of blocks striding over the rows."""
    def run(losses, dlogits, logits, targets, dloss, V):
        from llmnp.cuda.runtime import resident_blocks
        Vp = logits.shape[-1]
        N = logits.size // Vp
        smem = Vp * logits.dtype.itemsize
        k = plain_kernel(name, logits.dtype, "classifier_plain")
        k.max_dynamic_shared_size_bytes = smem
        grid = min(N, resident_blocks(k, 1024, smem)) if strided else N
        k((grid,), (1024,), (losses, dlogits, logits, targets, np.float32(dloss), np.int32(N), np.int32(V),
                             np.int32(Vp), np.int32(1)), shared_mem=smem)
    return run


def classifier(N=64 * 1024, rows=8192, V=50257, Vp=50304, tol=2e-2):
    """Each variant checked against NumPy's softmax at small shapes, then timed over N rows in blocks of
    `rows`; GB/s from the bytes a pass must move (the logits read once, dlogits written once)."""
    from llmnp import classifier as ref_cl
    from llmnp.cuda.classifier import crossentropy_forward_backward
    variants = (("one row per block, loaded through registers",
                 crossentropy_dev("crossentropy_forward_backward_plain", strided=False)),
                ("rows strided, each copied in whole (cp.async), two exps per logit",
                 crossentropy_dev("crossentropy_forward_backward_twoexp", strided=True)),
                ("one exp per logit, the next row copied in as this one goes out*", crossentropy_forward_backward))
    rng = np.random.default_rng(0)
    print(f"| classifier variant | max rel. error vs NumPy | ms for N={N} in blocks of {rows} | GB/s |")
    print("|---|---|---|---|")
    logits = cp.random.default_rng(0).standard_normal((N, Vp), dtype=np.float32).astype(BF16)   # made on the GPU
    targets = cp.asarray(rng.integers(0, V, size=N).astype(np.int32))
    losses = cp.empty(N, np.float32)
    for label, run in variants:
        err = 0.0
        for n, v, vp in ((300, V, Vp), (37, 90, 100)):
            x = cp.asarray(rng.standard_normal((n, vp)).astype(BF16))
            t = rng.integers(0, v, size=n).astype(np.int32)
            x_h = host_f64(x)
            probs = np.empty((n, vp))
            ref_cl.softmax_forward(probs, x_h, v)
            want_loss = -np.log(probs[np.arange(n), t])
            probs[np.arange(n), t] -= 1.0
            loss, d = cp.empty(n, np.float32), cp.full((n, vp), np.nan, BF16)
            run(loss, d, x, cp.asarray(t), 1.0 / n, v)
            err = max(err, relative_error(loss, want_loss), relative_error(d, probs / n))

        def step():
            for r in range(0, N, rows):
                run(losses[r:r + rows], logits[r:r + rows], logits[r:r + rows], targets[r:r + rows], 1.0 / N, V)
        ms = time_ms(step, 12) / 12
        print(f"| {label} | {err:.2e}{'' if err < tol else ' FAILS'} | {ms:.2f} | {2 * logits.nbytes / ms / 1e6:.0f} |")


FAMILIES = {"attention": attention, "matmul": matmul, "membound": membound, "classifier": classifier}


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
