"""The NumPy backend: every function model.py calls, by name. llmnp.cuda offers the same names.

Nothing is defined here; this is the list a GPU backend must match.
"""
from llmnp.encoder import encoder_forward, encoder_backward
from llmnp.layernorm import layernorm_forward, layernorm_backward, residual_layernorm_forward
from llmnp.matmul import matmul_forward, matmul_gelu_forward, matmul_backward, add_into
from llmnp.attention import attention_forward, attention_backward
from llmnp.gelu import gelu_forward, gelu_backward
from llmnp.residual import residual_forward, residual_backward
from llmnp.classifier import softmax_forward, crossentropy_forward, crossentropy_softmax_backward, \
    crossentropy_forward_backward
from llmnp.adamw import adamw_update, global_norm_squared

__all__ = [
    "encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward",
    "residual_layernorm_forward", "matmul_forward", "matmul_gelu_forward", "matmul_backward",
    "attention_forward", "attention_backward", "gelu_forward", "gelu_backward",
    "residual_forward", "residual_backward",
    "softmax_forward", "crossentropy_forward", "crossentropy_softmax_backward", "crossentropy_forward_backward",
    "add_into",
    "adamw_update", "global_norm_squared",
]
