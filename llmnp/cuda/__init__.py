"""The GPU backend: every function model.py calls, by the NumPy layers' names and argument order
(llmnp/layers.py is the list), as CUDA C kernels in llmnp/cuda/*.cu launched through CuPy, and cuBLAS
for the matmuls.

Storage is float32 (matches the CPU to ~1e-5) or bfloat16 with float32 statistics, optimizer state
and master weights. The accumulate rules are the NumPy layers' own, layer by layer.
Not here: the model (model.py runs unchanged on either backend).
"""
from llmnp.cuda.runtime import cublaslt, cupy as xp
from llmnp.cuda.encoder import encoder_forward, encoder_backward
from llmnp.cuda.layernorm import layernorm_forward, layernorm_backward, residual_layernorm_forward
if cublaslt() is not None:     # nvmath-python installed: the products with their epilogues (matmul_lt.py)
    from llmnp.cuda.matmul_lt import matmul_forward, matmul_gelu_forward, matmul_backward
else:                          # the plain products and kernels (matmul.py), the reference for those
    from llmnp.cuda.matmul import matmul_forward, matmul_gelu_forward, matmul_backward
from llmnp.cuda.matmul import add_into
from llmnp.cuda.attention import attention_forward, attention_backward
from llmnp.cuda.gelu import gelu_forward, gelu_backward
from llmnp.cuda.residual import residual_forward, residual_backward
from llmnp.cuda.classifier import softmax_forward, crossentropy_forward, crossentropy_softmax_backward, \
    crossentropy_forward_backward
from llmnp.cuda.adamw import adamw_update, global_norm_squared

__all__ = [
    "xp", "encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
    "residual_layernorm_forward", "matmul_forward", "matmul_gelu_forward", "matmul_backward",
    "attention_forward", "attention_backward", "gelu_forward", "gelu_backward",
    "residual_forward", "residual_backward",
    "softmax_forward", "crossentropy_forward", "crossentropy_softmax_backward", "crossentropy_forward_backward",
    "add_into",
    "adamw_update", "global_norm_squared",
]
