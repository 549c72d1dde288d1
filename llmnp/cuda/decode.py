"""Decoding launchers (decode.cu; llmnp/generate.py holds the NumPy references, same names and
arguments, and states the rules).

Shapes: B rows, C channels, NH heads, hs = C/NH, Tc cache positions, Vp padded vocab, V vocab;
x (B,1,C), kv (2,B,NH,Tc,hs), qkv (B,1,3C), logits (B,1,Vp); tok, pos, done, out, prompt_len int32 (B,),
prompt int32 (B,Tc), key uint64 (B,).
"""
import ctypes
import functools

import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel


def encoder_step(x, tok, pos, wte, wpe):
    """x (B,1,C) = wte[tok] + wpe[pos], row by row."""
    B, C = x.shape[0], x.shape[-1]
    check(x.dtype, x=x, wte=wte, wpe=wpe)
    check(np.int32, tok=tok, pos=pos)
    block_size = 256
    k = kernel("decode", "encoder_step_kernel", x.dtype)
    k((blocks(B * C, block_size),), (block_size,), (x, tok, pos, wte, wpe, np.int32(B), np.int32(C)))


def attention_step(out, kv, qkv, pos):
    """out (B,1,C) <- each row's query over its cache positions 0..pos; writes the row's key and value
    into kv (2,B,NH,Tc,hs) at pos first."""
    _, B, NH, Tc, hs = kv.shape
    check(out.dtype, out=out, kv=kv, qkv=qkv)
    check(np.int32, pos=pos)
    if hs > 128 or out.shape[-1] != NH * hs or qkv.shape[-1] != 3 * NH * hs:
        raise ValueError(f"attention_step shapes disagree (or hs > 128): out {out.shape}, kv {kv.shape}, qkv {qkv.shape}")
    block_size = 128
    smem = 4 * Tc                                          # the scores of one (row, head)
    k = kernel("decode", "attention_step_kernel", out.dtype, HS=hs)
    k.max_dynamic_shared_size_bytes = smem
    k((B * NH,), (block_size,), (out, kv, qkv, pos, np.int32(B), np.int32(NH), np.int32(Tc)), shared_mem=smem)


def sample_step(out, tok, pos, done, logits, prompt, prompt_len, key, V, temperature, top_k, top_p, eot):
    """Per row: out = the token sampled from logits (B,1,Vp) (-1 while in the prompt or done), and the
    next step's tok and pos (or done)."""
    B, Vp = logits.shape[0], logits.shape[-1]
    Tc = prompt.shape[1]
    check(np.int32, out=out, tok=tok, pos=pos, done=done, prompt=prompt, prompt_len=prompt_len)
    check(np.uint64, key=key)
    check(logits.dtype, logits=logits)
    block_size = 1024                                      # decode.cu's scan holds 1024 partial sums
    k = kernel("decode", "sample_step_kernel", logits.dtype)
    k((B,), (block_size,), (out, tok, pos, done, logits, prompt, prompt_len, key, np.int32(Vp), np.int32(V),
                            np.int32(Tc), np.float32(temperature), np.int32(top_k), np.float32(top_p),
                            np.int32(eot)))


# --------------------------------------------------------------------- products inside a graph
# CuPy's cuBLAS wrappers refuse to run while a stream is being captured (their check comes before they
# bind the handle to the current stream), though cuBLAS itself captures fine. So the decode step calls
# cublasSetStream and cublasGemmEx of the library CuPy has loaded, through ctypes. The product is
# runtime.gemm's: same arguments, same fp32 accumulation, and its host alpha and beta (kept for good,
# so a captured graph may read them at every replay).


@functools.lru_cache(maxsize=None)
def _cublas_gemm_ex():
    """cublasGemmEx, cublasSetStream_v2 and cublasSetPointerMode_v2 of the libcublas this process has loaded."""
    from llmnp.cuda.runtime import cupy
    from cupy_backends.cuda.libs import cublas  # noqa: F401  loads libcublas
    cupy()
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "/libcublas.so" in line}
    if not paths:
        raise RuntimeError("libcublas is not loaded in this process")
    lib = ctypes.CDLL(sorted(paths)[0])
    fn = lib.cublasGemmEx
    p, i = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
    fn.restype = i
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetPointerMode_v2.argtypes = [p, i]
    lib.cublasSetStream_v2.restype = lib.cublasSetPointerMode_v2.restype = i
    return fn, lib.cublasSetStream_v2, lib.cublasSetPointerMode_v2


def matmul_forward(out, inp, weight, bias):
    """out (B,1,OC) <- inp (B,1,C), weight (OC,C), bias (OC,) or None: runtime.gemm's product, callable
    while the stream is captured (the bias as matmul.py's launcher adds it: out = bias, then += product)."""
    from llmnp.cuda.runtime import _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT, _CUDA_R_16BF, _CUDA_R_32F, \
        _alpha_beta, cupy, pack, storage_is_bf16
    OC, C = weight.shape
    N = inp.size // C
    check(out.dtype, out=out, inp=inp, weight=weight)
    if bias is not None:
        check(out.dtype, bias=bias)
        block_size = 256
        k = kernel("matmul", "matmul_forward_kernel", out.dtype)
        k((blocks(N * OC, block_size * pack(out.dtype)),), (block_size,), (out, bias, np.int32(N), np.int32(OC)))
    gemm_ex, set_stream, set_pointer_mode = _cublas_gemm_ex()
    cp = cupy()
    handle = cp.cuda.device.get_cublas_handle()
    set_stream(handle, cp.cuda.get_current_stream().ptr)
    set_pointer_mode(handle, 0)                             # CUBLAS_POINTER_MODE_HOST
    dtype = _CUDA_R_16BF if storage_is_bf16(out.dtype) else _CUDA_R_32F
    ab = _alpha_beta(0.0 if bias is None else 1.0)
    # out_cm (OC x N) = W_cm^T (W_cm: C x OC) @ inp_cm (C x N), as matmul.py explains
    status = gemm_ex(handle, 1, 0, OC, N, C, ab.ctypes.data, weight.data.ptr, dtype, C, inp.data.ptr, dtype, C,
                     ab.ctypes.data + 4, out.data.ptr, dtype, OC, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
    if status != 0:
        raise RuntimeError(f"cublasGemmEx failed with status {status}")
