"""Matmul launchers on cuBLASLt: matmul.py's products, with the bias, GELU and GELU's gradient applied
in the product's epilogue instead of by a kernel of their own, saving a pass over the output each:

    matmul_forward         out = inp @ weight^T + bias                  (epilogue BIAS)
    matmul_gelu_forward    pre_gelu = inp @ weight^T + bias,
                           out = gelu(pre_gelu)                         (GELU_AUX_BIAS: pre_gelu is the aux)
    matmul_backward        dinp = (dout @ weight) * gelu'(pre_gelu)     (DGELU, when pre_gelu is given)

matmul.py stays the plain form these are tested against; llmnp/cuda/__init__.py takes these where
nvmath-python (the cuBLASLt binding) is installed. The column-major mapping is matmul.py's.
"""
from llmnp.cuda.matmul import check_dweight, matmul_dbias
from llmnp.cuda.runtime import check, gemm_lt


def matmul_forward(out, inp, weight, bias):
    """out (B,T,OC) <- inp (B,T,C), weight (OC,C), bias (OC,) or None."""
    OC, C = weight.shape
    N = inp.size // C
    check(out.dtype, out=out, inp=inp, weight=weight, **({} if bias is None else {"bias": bias}))
    gemm_lt(out, weight, inp, m=OC, n=N, k=C, transa=True, transb=False, lda=C, ldb=C, ldc=OC,
            epilogue="DEFAULT" if bias is None else "BIAS", bias=bias)


def matmul_gelu_forward(out, pre_gelu, inp, weight, bias):
    """pre_gelu (B,T,OC) <- inp (B,T,C) @ weight (OC,C)^T + bias (OC,); out (B,T,OC) <- gelu(pre_gelu)."""
    OC, C = weight.shape
    N = inp.size // C
    check(out.dtype, out=out, pre_gelu=pre_gelu, inp=inp, weight=weight, bias=bias)
    gemm_lt(out, weight, inp, m=OC, n=N, k=C, transa=True, transb=False, lda=C, ldb=C, ldc=OC,
            epilogue="GELU_AUX_BIAS", bias=bias, aux=pre_gelu)


def matmul_backward(dinp, dweight, dbias, dout, inp, weight, pre_gelu=None):
    """dinp (B,T,C) overwritten (unless None); adds into dweight (OC,C) and dbias (OC,) (unless None).
    With pre_gelu (B,T,C), inp being gelu(pre_gelu): dinp is the gradient with respect to pre_gelu.
    dweight may be float32 where the rest is bf16 (the product then sums into it in float32)."""
    OC, C = weight.shape
    N = inp.size // C
    check(dout.dtype, dout=dout, inp=inp, weight=weight)
    check_dweight(dweight, dout)
    if dinp is not None:
        check(dout.dtype, dinp=dinp, **({} if pre_gelu is None else {"pre_gelu": pre_gelu}))
        gemm_lt(dinp, weight, dout, m=C, n=N, k=OC, transa=False, transb=False, lda=C, ldb=OC, ldc=C,
                epilogue="DEFAULT" if pre_gelu is None else "DGELU", aux=pre_gelu)
    gemm_lt(dweight, inp, dout, m=C, n=OC, k=N, transa=False, transb=True, lda=C, ldb=OC, ldc=C, beta=1.0)
    if dbias is not None:
        matmul_dbias(dbias, dout)
