"""Classifier launchers: softmax, cross-entropy and their fused backward (classifier.cu;
llmnp/classifier.py is the reference and states the rules). losses are float32 in both storage modes.

Shapes: B batch, T time, V vocab, Vp padded vocab; targets int32 (B,T).
"""
import numpy as np

from llmnp.cuda.runtime import blocks, check, kernel

MAX_SHARED = 200 * 1024       # dynamic shared memory a softmax block may take (H100: up to 227 KiB)


def softmax_forward(probs, logits, V):
    """probs (B,T,Vp) <- softmax of logits (B,T,Vp) over the first V columns; probs[..., V:] = 0."""
    Vp = logits.shape[-1]
    N = logits.size // Vp
    check(probs.dtype, probs=probs, logits=logits)
    block_size = 1024
    k = kernel("classifier", "softmax_forward_kernel2", probs.dtype)
    smem = Vp * probs.dtype.itemsize                      # the row, kept in shared memory between passes
    cached = smem <= MAX_SHARED
    k.max_dynamic_shared_size_bytes = smem if cached else 0
    k((N,), (block_size,), (probs, logits, np.int32(N), np.int32(V), np.int32(Vp), np.int32(cached)),
      shared_mem=smem if cached else 0)


def crossentropy_forward(losses, probs, targets):
    """losses (B,T) <- -log probs[b, t, targets[b, t]]."""
    Vp = probs.shape[-1]
    N = probs.size // Vp
    check(probs.dtype, probs=probs)
    check(np.float32, losses=losses)
    check(np.int32, targets=targets)
    block_size = 256
    k = kernel("classifier", "crossentropy_forward_kernel1", probs.dtype)
    k((blocks(N, block_size),), (block_size,), (losses, probs, targets, np.int32(N), np.int32(Vp)))


def crossentropy_softmax_backward(dlogits, probs, targets, dloss):
    """dlogits (B,T,Vp) <- (probs - onehot(targets)) * dloss, overwritten; dlogits may alias probs."""
    Vp = probs.shape[-1]
    N = probs.size // Vp
    check(probs.dtype, dlogits=dlogits, probs=probs)
    check(np.int32, targets=targets)
    block_size = 512
    k = kernel("classifier", "crossentropy_softmax_backward_kernel1", probs.dtype)
    k((N,), (block_size,), (dlogits, probs, targets, np.float32(dloss), np.int32(N), np.int32(Vp)))
