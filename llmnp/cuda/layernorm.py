"""LayerNorm launchers, and the residual add fused with the layernorm after it (layernorm.cu;
llmnp/layernorm.py is the reference and states the rules).

mean and rstd are float32 in both storage modes. Shapes: N = B*T rows (any leading shape), C channels.
The kernels are compiled for the C they run at: ROW_CHUNKS, the PACK-wide chunks of a row each lane of
a warp holds in registers, is a -D constant (one build per C and storage dtype).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel, pack, resident_blocks, scratch


def row_chunks(C, dtype):
    """layernorm.cu's ROW_CHUNKS: ceil(C / (32 * PACK)), the chunks of a row per lane of a warp."""
    return blocks(C, 32 * pack(dtype))


def layernorm_forward(out, mean, rstd, inp, weight, bias):
    """out (B,T,C), mean (B,T), rstd (B,T) <- inp (B,T,C), weight (C,), bias (C,)."""
    C = inp.shape[-1]
    N = inp.size // C
    check(out.dtype, out=out, inp=inp, weight=weight, bias=bias)
    check(np.float32, mean=mean, rstd=rstd)
    block_size = 256                                      # 8 warps, one row each
    k = kernel("layernorm", "layernorm_forward_kernel", out.dtype, ROW_CHUNKS=row_chunks(C, out.dtype))
    k((blocks(N, block_size // 32),), (block_size,), (out, mean, rstd, inp, weight, bias, np.int32(N), np.int32(C)))


def residual_layernorm_forward(residual, out, mean, rstd, inp, proj, proj_bias, weight, bias):
    """residual (B,T,C) <- inp + (proj + proj_bias), then out (B,T,C), mean (B,T), rstd (B,T) <- layernorm
    of residual with weight (C,), bias (C,). residual may be proj itself."""
    C = inp.shape[-1]
    N = inp.size // C
    check(out.dtype, residual=residual, out=out, inp=inp, proj=proj, proj_bias=proj_bias, weight=weight, bias=bias)
    check(np.float32, mean=mean, rstd=rstd)
    block_size = 128                                      # 4 warps, rows strided over the grid
    k = kernel("layernorm", "residual_layernorm_forward_kernel", out.dtype, ROW_CHUNKS=row_chunks(C, out.dtype))
    grid = min(blocks(N, block_size // 32), resident_blocks(k, block_size, 0))      # one wave
    k((grid,), (block_size,), (residual, out, mean, rstd, inp, proj, proj_bias, weight, bias, np.int32(N), np.int32(C)))


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, dproj_bias=None):
    """Adds into dinp (B,T,C), dweight (C,), dbias (C,) from dout (B,T,C); and into dproj_bias (C,), unless
    None, the rows of dinp as it leaves them summed."""
    C = inp.shape[-1]
    N = inp.size // C
    check(dinp.dtype, dinp=dinp, dweight=dweight, dbias=dbias, dout=dout, inp=inp, weight=weight)
    check(np.float32, mean=mean, rstd=rstd)
    sums = 2 if dproj_bias is None else 3                # partial sums per column: dweight, dbias (, dproj_bias)
    if dproj_bias is not None:
        check(dinp.dtype, dproj_bias=dproj_bias)
    block_size = 128                                      # 4 warps, rows strided over the grid (layernorm.cu's
    chunks = row_chunks(C, dinp.dtype)                    # __launch_bounds__ name this size)
    smem = (block_size // 32) * sums * chunks * 32 * pack(dinp.dtype) * 4     # each warp's rows of sums
    k = kernel("layernorm", "layernorm_backward_rows", dinp.dtype, ROW_CHUNKS=chunks)
    k.max_dynamic_shared_size_bytes = smem
    grid = min(blocks(N, block_size // 32), resident_blocks(k, block_size, smem))   # one wave
    partial = scratch("layernorm_partial", grid * sums * C)
    k((grid,), (block_size,), (dinp, partial, dout, inp, weight, mean, rstd, np.int32(N), np.int32(C), np.int32(sums)),
      shared_mem=smem)
    k = kernel("layernorm", "layernorm_backward_dweight_dbias", dinp.dtype, ROW_CHUNKS=chunks)
    k((blocks(sums * C, 32),), (32, 32), (dweight, dbias, dbias if dproj_bias is None else dproj_bias, partial,
                                         np.int32(grid), np.int32(sums), np.int32(C)))
