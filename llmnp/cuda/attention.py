"""Attention launchers (attention.cu; llmnp/attention.py is the reference and states the rules).

bf16 storage with a head size that is a multiple of 16 up to 128 (GPT-2's is 64) runs on the tensor-core
kernels; everything else (fp32 storage, other head sizes up to 128) on the fp32 CUDA-core kernels.
lse and the backward's D = rowsum(dout * out) are float32 (B,NH,T); the tensor-core backward adds dq into a
float32 (B,T,C) scratch buffer first.
Shapes: B batch, T time, C channels, NH heads, hs = C/NH; qkv (B,T,3C), out/dout (B,T,C).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel, pack, scratch, storage_is_bf16

ROWS = 64                     # query (or key) rows per block in every kernel (attention.cu ROWS1, TILE)
TILE1 = 32                    # attention.cu TILE1


def _shapes(out, lse, qkv):
    B, T, C = out.shape
    NH = lse.shape[1]
    if C % NH or lse.shape != (B, NH, T) or qkv.shape != (B, T, 3 * C):
        raise ValueError(f"attention shapes disagree: out {out.shape}, lse {lse.shape}, qkv {qkv.shape}")
    hs = C // NH
    if hs > 128:
        raise ValueError(f"the GPU attention kernels take head sizes up to 128, got {hs}")
    return B, T, C, NH, hs


def use_tensor_cores(dtype, hs, *arrays):
    """The mma kernels need bf16, hs % 16 == 0, hs <= 128 and 16-byte aligned rows."""
    return (storage_is_bf16(dtype) and hs % 16 == 0 and hs <= 128
            and all(a.data.ptr % 16 == 0 for a in arrays))


def tile_smem(hs, tiles, floats=0):
    """Dynamic shared memory of a tensor-core kernel: `tiles` bf16 tiles of ROWS rows at pitch hs + 8,
    then `floats` float32 values."""
    return tiles * ROWS * (hs + 8) * 2 + 4 * floats


def tensor_core_kernel(name, dtype, hs, smem):
    k = kernel("attention", name, dtype, HS=hs)
    k.max_dynamic_shared_size_bytes = smem          # above 48 KB needs the opt-in (87 KB at hs = 128)
    return k


def attention_forward(out, lse, qkv, tensor_cores=None):
    """out (B,T,C), lse (B,NH,T) <- qkv (B,T,3C). tensor_cores: None chooses (tests force either)."""
    B, T, C, NH, hs = _shapes(out, lse, qkv)
    check(out.dtype, out=out, qkv=qkv)
    check(np.float32, lse=lse)
    if tensor_cores is None:
        tensor_cores = use_tensor_cores(out.dtype, hs, out, qkv)
    args = (out, lse, qkv, np.int32(B), np.int32(T), np.int32(NH))
    if tensor_cores:
        smem = tile_smem(hs, 5)
        tensor_core_kernel("attention_forward_mma", out.dtype, hs, smem)((blocks(T, ROWS), B * NH), (128,), args,
                                                                           shared_mem=smem)
    else:
        kernel("attention", "attention_forward_fp32", out.dtype, HS=hs)((blocks(T, ROWS), B * NH), (ROWS,), args)


def rowdot(D, dq_acc, dout, out, NH):
    """D (B,NH,T) float <- rowsum(dout * out) per head; dq_acc (B,T,C) float, unless None, zeroed."""
    B, T, C = out.shape
    hs = C // NH
    packs = hs // pack(out.dtype)                          # attention_backward_rowdot's threads per row
    lanes = packs if hs % pack(out.dtype) == 0 and 32 % packs == 0 else 32
    k = kernel("attention", "attention_backward_rowdot", out.dtype, HS=hs)
    k((blocks(B * T * NH * lanes, 256),), (256,),
      (D, np.uint64(0) if dq_acc is None else dq_acc, dout, out, np.int32(B), np.int32(T), np.int32(NH)))


def attention_backward(dqkv, dout, qkv, out, lse, tensor_cores=None):
    """dqkv (B,T,3C) overwritten <- dout (B,T,C), with qkv, out, lse saved by forward."""
    B, T, C, NH, hs = _shapes(out, lse, qkv)
    check(out.dtype, dqkv=dqkv, dout=dout, qkv=qkv, out=out)
    check(np.float32, lse=lse)
    if tensor_cores is None:
        tensor_cores = use_tensor_cores(out.dtype, hs, dqkv, dout, qkv, out)
    D = scratch("attention_D", B * NH * T)
    dq_acc = scratch("attention_dq", B * T * C) if tensor_cores else None
    rowdot(D, dq_acc, dout, out, NH)                       # D, and dq_acc = 0 for the atomics
    sizes = (np.int32(B), np.int32(T), np.int32(NH))
    grid = (blocks(T, ROWS), B * NH)
    if tensor_cores:
        smem = tile_smem(hs, 6, 4 * ROWS) + ROWS * (ROWS + 8) * 2                   # + dS^T at pitch 72
        tensor_core_kernel("attention_backward_mma", out.dtype, hs, smem)(
            grid, (128,), (dqkv, dq_acc, dout, qkv, lse, D) + sizes, shared_mem=smem)
        kernel("attention", "attention_backward_dq_store", out.dtype, HS=hs)(
            (blocks(B * T * C // 2, 256),), (256,), (dqkv, dq_acc) + sizes)
    else:
        smem = 4 * (2 * ROWS * (hs + 1) + 2 * TILE1 * hs + 2 * TILE1)
        for name in ("attention_backward_dkdv_fp32", "attention_backward_dq_fp32"):
            k = kernel("attention", name, out.dtype, HS=hs)
            k.max_dynamic_shared_size_bytes = smem
            k(grid, (ROWS,), (dqkv, dout, qkv, lse, D) + sizes, shared_mem=smem)
