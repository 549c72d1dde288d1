"""Notebook 03's exercise: the linear layer's backward."""


def matmul_backward_scratch(dout, x, W, b):
    """dx (B,T,C), dW (OC,C), db (OC,) from dout (B,T,OC); forward y = x @ W^T + b."""
    dout2, x2 = dout.reshape(-1, W.shape[0]), x.reshape(-1, W.shape[1])   # (N,OC), (N,C)
    dx = dout2 @ W                   # (N,OC) @ (OC,C)
    dW = dout2.T @ x2                # (OC,N) @ (N,C)
    db = dout2.sum(axis=0)           # (OC,)
    return dx.reshape(x.shape), dW, db
