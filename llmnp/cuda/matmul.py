"""Matmul launchers: the products on cuBLAS (fp32 accumulation), bias and dbias in matmul.cu
(llmnp/matmul.py is the reference and states the rules).

cuBLAS is column-major: a row-major (N, C) array is a column-major C x N matrix (written X_cm). So
out (N,OC) = inp (N,C) @ weight (OC,C)^T is out_cm (OC x N) = W_cm^T (W_cm: C x OC) @ inp_cm (C x N):
the (out, in) weight layout is used as it is, never transposed in memory.
Shapes: N = B*T rows (any leading shape is flattened), C in channels, OC out channels.
"""
import numpy as np

from llmnp.cuda.gelu import gelu_backward, gelu_forward
from llmnp.cuda.runtime import blocks, check, gemm, kernel, num_sms, pack, scratch


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) <- inp (B,T,C), weight (OC,C), bias (OC,) or None."""
    OC, C = weight.shape
    N = inp.size // C
    check(out.dtype, out=out, inp=inp, weight=weight)
    if bias is not None:                        # out = bias first, then the product adds onto it
        check(out.dtype, bias=bias)
        block_size = 256
        k = kernel("matmul", "matmul_forward_kernel", out.dtype)
        k((blocks(N * OC, block_size * pack(out.dtype)),), (block_size,), (out, bias, np.int32(N), np.int32(OC)))
    gemm(out, weight, inp, m=OC, n=N, k=C, transa=True, transb=False, lda=C, ldb=C, ldc=OC,
         beta=0.0 if bias is None else 1.0)


def matmul_gelu_forward(out, pre_gelu, inp, weight, bias):
    """pre_gelu (B,T,OC) <- inp (B,T,C) @ weight (OC,C)^T + bias (OC,); out (B,T,OC) <- gelu(pre_gelu)."""
    matmul_forward(pre_gelu, inp, weight, bias)
    gelu_forward(out, pre_gelu)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None):
    """dinp (B,T,C) overwritten (unless None); adds into dweight (OC,C) and dbias (OC,) (unless None).
    With pre_gelu (B,T,C), inp being gelu(pre_gelu): dinp is the gradient with respect to pre_gelu.
    dweight may be float32 where the rest is bf16 (the product then sums into it in float32)."""
    OC, C = weight.shape
    N = inp.size // C
    check(dout.dtype, dout=dout, inp=inp, weight=weight)
    check_dweight(dweight, dout)
    if dinp is not None:
        check(dout.dtype, dinp=dinp)
        # dinp (N,C) = dout (N,OC) @ weight (OC,C):  dinp_cm (C x N) = W_cm (C x OC) @ dout_cm (OC x N)
        gemm(dinp, weight, dout, m=C, n=N, k=OC, transa=False, transb=False, lda=C, ldb=OC, ldc=C)
        if pre_gelu is not None:
            gelu_backward(dinp, pre_gelu, dinp)
    # dweight (OC,C) += dout^T (OC,N) @ inp (N,C):  dW_cm (C x OC) += inp_cm (C x N) @ dout_cm^T (N x OC)
    gemm(dweight, inp, dout, m=C, n=OC, k=N, transa=False, transb=True, lda=C, ldb=OC, ldc=C, beta=1.0)
    if dbias is not None:
        matmul_dbias(dbias, dout)


def matmul_dbias(dbias, dout):
    """dbias (OC,) += dout (B,T,OC) summed over its N = B*T rows: per-block column sums, then their total."""
    OC = dbias.size
    N = dout.size // OC
    check(dout.dtype, dbias=dbias)
    col_blocks = blocks(OC, 32 * pack(dout.dtype))
    # row ranges: one wave of blocks, 6 per SM (what fits at the partial kernel's 36 registers in bf16)
    R = max(1, min(blocks(N, 64), blocks(6 * num_sms(), col_blocks)))
    partial = scratch("matmul_partial", R * OC)
    k = kernel("matmul", "matmul_backward_dbias_partial", dout.dtype)
    k((col_blocks, R), (32, 8), (partial, dout, np.int32(N), np.int32(OC)))
    k = kernel("matmul", "matmul_backward_dbias_total", dout.dtype)
    k((blocks(OC, 32),), (32, 32), (dbias, partial, np.int32(R), np.int32(OC)))


def check_dweight(dweight, dout):
    """dweight of dout's dtype, or float32."""
    check(np.float32 if dweight.dtype == np.float32 else dout.dtype, dweight=dweight)


def add_into(out, inp):
    """out (any shape) += inp (out's shape, float32), in float32 arithmetic."""
    check(out.dtype, out=out)
    check(np.float32, inp=inp)
    if inp.shape != out.shape:
        raise ValueError(f"add_into: inp {inp.shape} and out {out.shape} differ")
    block_size = 256
    k = kernel("matmul", "add_into_kernel", out.dtype)
    k((min(blocks(out.size, block_size), 32 * num_sms()),), (block_size,), (out, inp, np.int64(out.size)))
