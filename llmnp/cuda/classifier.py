"""Classifier launchers: softmax, and the fused cross-entropy loss and backward that training uses
(classifier.cu; llmnp/classifier.py is the reference and states the rules). No probs buffer in training:
the loss reads the logits only, the backward recomputes the softmax from them and the forward's lse and
may write dlogits over them. losses and lse are float32 in both storage modes.

Shapes: B batch, T time, V vocab, Vp padded vocab; targets int32 (B,T).
"""
import numpy as np

from llmnp.cuda.runtime import check, kernel, max_shared, resident_blocks


def fits_in_shared(row_bytes):
    """Whether a row of row_bytes fits in a block's shared memory, with 1 KiB left for the kernels' own
    small arrays (block_sum's, block_max's)."""
    return row_bytes + 1024 <= max_shared()


def softmax_forward(probs, logits, V):
    """probs (B,T,Vp) <- softmax of logits (B,T,Vp) over the first V columns; probs[..., V:] = 0."""
    Vp = logits.shape[-1]
    N = logits.size // Vp
    check(probs.dtype, probs=probs, logits=logits)
    block_size = 1024
    k = kernel("classifier", "softmax_forward_kernel", probs.dtype)
    smem = Vp * probs.dtype.itemsize                      # the row, kept in shared memory between passes
    cached = fits_in_shared(smem)
    k.max_dynamic_shared_size_bytes = smem if cached else 0
    k((N,), (block_size,), (probs, logits, np.int32(N), np.int32(V), np.int32(Vp), np.int32(cached)),
      shared_mem=smem if cached else 0)


def crossentropy_forward(losses, lse, logits, targets, V):
    """losses (B,T) <- lse - logits[b, t, targets[b, t]], lse (B,T) <- logsumexp(logits[b, t, :V]);
    logits (B,T,Vp) are only read."""
    Vp = logits.shape[-1]
    N = logits.size // Vp
    check(logits.dtype, logits=logits)
    check(np.float32, losses=losses, lse=lse)
    check(np.int32, targets=targets)
    block_size = 512
    k = kernel("classifier", "crossentropy_forward_kernel", logits.dtype)
    k((N,), (block_size,), (losses, lse, logits, targets, np.int32(N), np.int32(V), np.int32(Vp)))


def crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V):
    """dlogits (B,T,Vp) <- (exp(logits[..., :V] - lse) - onehot(targets)) * dloss, 0 in the padded columns,
    lse (B,T) from crossentropy_forward; overwritten, and dlogits may be logits itself."""
    Vp = logits.shape[-1]
    N = logits.size // Vp
    check(logits.dtype, dlogits=dlogits, logits=logits)
    check(np.float32, lse=lse)
    check(np.int32, targets=targets)
    block_size = 512
    k = kernel("classifier", "crossentropy_softmax_backward_kernel", logits.dtype)
    k((N,), (block_size,), (dlogits, logits, lse, targets, np.float32(dloss), np.int32(N), np.int32(V), np.int32(Vp)))


def crossentropy_forward_backward(losses, dlogits, logits, targets, dloss, V):
    """crossentropy_forward's losses (B,T) and crossentropy_softmax_backward's dlogits (B,T,Vp) in one pass
    over the logits (no lse kept); dlogits may be logits itself."""
    Vp = logits.shape[-1]
    N = logits.size // Vp
    check(logits.dtype, dlogits=dlogits, logits=logits)
    check(np.float32, losses=losses)
    check(np.int32, targets=targets)
    k = kernel("classifier", "crossentropy_forward_backward_kernel", logits.dtype)
    smem = Vp * logits.dtype.itemsize                     # the row, kept in shared memory between passes
    cached = fits_in_shared(smem)
    smem = smem if cached else 0
    k.max_dynamic_shared_size_bytes = smem
    grid = min(N, resident_blocks(k, 1024, smem))         # one wave; blocks stride over the rows
    k((grid,), (1024,), (losses, dlogits, logits, targets, np.float32(dloss), np.int32(N), np.int32(V), np.int32(Vp),
                         np.int32(cached)), shared_mem=smem)
