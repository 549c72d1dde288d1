"""Every NumPy layer: forward against an independent one-line oracle, backward against float64 finite
differences for every input and parameter, and the accumulate-or-overwrite rule of its docstring.
The layers that split their rows over threads and walk them in blocks run twice: as one block on one
thread, and cut into blocks of a few rows over two threads (the `split` fixture)."""
import numpy as np
import pytest

import llmnp.classifier
import llmnp.gelu
import llmnp.layernorm
import llmnp.matmul
from gradcheck import assert_grad
from llmnp.attention import attention_backward, attention_forward
from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward, softmax_forward
from llmnp.encoder import encoder_backward, encoder_forward
from llmnp.gelu import gelu_backward, gelu_forward
from llmnp.layernorm import layernorm_backward, layernorm_forward, residual_layernorm_forward
from llmnp.matmul import matmul_backward, matmul_forward, matmul_gelu_forward
from llmnp.residual import residual_backward, residual_forward

B, T, C, NH, V, Vp = 2, 5, 8, 2, 11, 16


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=["one thread, one block", "two threads, small blocks"])
def split(request, monkeypatch):
    """Run a test with the layers' work in one piece, then cut into blocks of 3-5 rows over 2 threads."""
    if request.param.startswith("one"):
        monkeypatch.setenv("LLMNP_NUM_THREADS", "1")
    else:
        monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
        monkeypatch.setattr(llmnp.gelu, "BLOCK", 3 * 4 * C)          # 3 rows of (B*T, 4C)
        monkeypatch.setattr(llmnp.layernorm, "ROWS", 3)
        monkeypatch.setattr(llmnp.classifier, "ROWS", 3)
        monkeypatch.setattr(llmnp.matmul, "DWEIGHT_BLOCK", 5 * C)    # dweight in blocks of 5 rows,
        monkeypatch.setattr(llmnp.matmul, "BLOCK", 2 * C)            # each added over threads 2 rows at least
    return request.param


# ----------------------------------------------------------------------------------- encoder
def test_encoder(rng):
    inp = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = rng.standard_normal((Vp, C)), rng.standard_normal((T + 3, C))
    out = np.empty((B, T, C))
    encoder_forward(out, inp, wte, wpe)
    oracle = np.array([[wte[inp[b, t]] + wpe[t] for t in range(T)] for b in range(B)])
    np.testing.assert_allclose(out, oracle, rtol=1e-15)

    dout = rng.standard_normal((B, T, C))
    dwte, dwpe = np.ones((Vp, C)), np.ones((T + 3, C))           # accumulates onto ones
    encoder_backward(dwte, dwpe, dout, inp)
    f = lambda: (encoder_forward(out, inp, wte, wpe), np.sum(out * dout))[1]
    assert_grad(f, wte, dwte - 1, rng, name="wte")
    assert_grad(f, wpe, dwpe - 1, rng, name="wpe")
    np.testing.assert_array_equal(dwpe[T:], 1.0)                 # unused positions untouched


# --------------------------------------------------------------------------------- layernorm
def test_layernorm(rng, split):
    inp = rng.standard_normal((B, T, C)) * 3 + 1
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    out, mean, rstd = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(out, mean, rstd, inp, w, b)
    oracle = (inp - inp.mean(-1, keepdims=True)) / np.sqrt(inp.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(out, oracle, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(inp.var(-1) + 1e-5), rtol=1e-12)

    dout = rng.standard_normal((B, T, C))
    dinp, dw, db = np.full((B, T, C), 2.0), np.full(C, 2.0), np.full(C, 2.0)   # all three accumulate
    layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd)
    m2, r2 = np.empty((B, T)), np.empty((B, T))
    f = lambda: (layernorm_forward(out, m2, r2, inp, w, b), np.sum(out * dout))[1]
    assert_grad(f, inp, dinp - 2, rng, name="inp")
    assert_grad(f, w, dw - 2, rng, name="weight")
    assert_grad(f, b, db - 2, rng, name="bias")


def test_layernorm_backward_projection_bias(rng, split):
    """dproj_bias: the gradient of a projection's bias added into the residual stream the layernorm reads
    (residual = rest + pb), the layernorm's output and the gradient from above (g0) both counted."""
    rest, pb = rng.standard_normal((B, T, C)) * 3 + 1, rng.standard_normal(C)
    w, b, dout, g0 = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    out, mean, rstd = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(out, mean, rstd, rest + pb, w, b)
    dinp, dw, db, dpb = g0.copy(), np.zeros(C), np.zeros(C), np.full(C, 2.0)     # dproj_bias accumulates
    layernorm_backward(dinp, dw, db, dout, rest + pb, w, mean, rstd, dproj_bias=dpb)
    m2, r2 = np.empty((B, T)), np.empty((B, T))
    f = lambda: (layernorm_forward(out, m2, r2, rest + pb, w, b), np.sum(out * dout) + np.sum((rest + pb) * g0))[1]
    assert_grad(f, pb, dpb - 2, rng, name="projection bias")


# ------------------------------------------------------------------------------------ matmul
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul(rng, with_bias, split):
    OC = 12
    inp, w = rng.standard_normal((B, T, C)), rng.standard_normal((OC, C))
    bias = rng.standard_normal(OC) if with_bias else None
    out = np.empty((B, T, OC))
    matmul_forward(out, inp, w, bias)
    oracle = np.einsum("btc,oc->bto", inp, w) + (bias if with_bias else 0)
    np.testing.assert_allclose(out, oracle, rtol=1e-12, atol=1e-12)

    dout = rng.standard_normal((B, T, OC))
    dinp = np.full((B, T, C), 5.0)                                # overwritten
    dw = np.full((OC, C), 2.0)                                    # accumulates
    db = np.full(OC, 2.0) if with_bias else None
    matmul_backward(dinp, dw, db, dout, inp, w)
    f = lambda: (matmul_forward(out, inp, w, bias), np.sum(out * dout))[1]
    assert_grad(f, inp, dinp, rng, name="inp")
    assert_grad(f, w, dw - 2, rng, name="weight")
    if with_bias:
        assert_grad(f, bias, db - 2, rng, name="bias")


# --------------------------------------------------------------------------------- attention
def attention_oracle(qkv, NH):
    """Per-head loops, explicit mask: the textbook formula, independent of attention.py's reshapes."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    out = np.zeros((B, T, C))
    for b in range(B):
        for h in range(NH):
            q = qkv[b, :, h * hs:(h + 1) * hs]
            k = qkv[b, :, C + h * hs:C + (h + 1) * hs]
            v = qkv[b, :, 2 * C + h * hs:2 * C + (h + 1) * hs]
            s = q @ k.T / np.sqrt(hs) + np.where(np.tri(T) > 0, 0.0, -np.inf)
            p = np.exp(s - s.max(1, keepdims=True))
            out[b, :, h * hs:(h + 1) * hs] = (p / p.sum(1, keepdims=True)) @ v
    return out


def test_attention(rng, split):
    qkv = rng.standard_normal((B, T, 3 * C))
    out, lse = np.empty((B, T, C)), np.empty((B, NH, T))
    attention_forward(out, lse, qkv)
    np.testing.assert_allclose(out, attention_oracle(qkv, NH), rtol=1e-12, atol=1e-12)
    # position 0 attends only to itself: its output is its own v
    np.testing.assert_allclose(out[:, 0], qkv[:, 0, 2 * C:], rtol=1e-12)

    dout = rng.standard_normal((B, T, C))
    dqkv = np.full((B, T, 3 * C), 7.0)                           # overwritten
    attention_backward(dqkv, dout, qkv, out, lse)
    o2, l2 = np.empty_like(out), np.empty_like(lse)
    f = lambda: (attention_forward(o2, l2, qkv), np.sum(o2 * dout))[1]
    assert_grad(f, qkv, dqkv, rng, name="qkv")
    # causality: no gradient reaches the keys/values of the last position from earlier outputs
    dqkv_first = np.empty_like(dqkv)
    d0 = np.zeros_like(dout)
    d0[:, 0] = dout[:, 0]
    attention_backward(dqkv_first, d0, qkv, out, lse)
    np.testing.assert_array_equal(dqkv_first[:, 1:], 0.0)


def test_attention_backward_qkv_bias(rng, split):
    """dqkv_bias: the gradient of a bias added to every row of qkv (the qkv projection's), accumulated."""
    rest, bias = rng.standard_normal((B, T, 3 * C)), rng.standard_normal(3 * C)
    out, lse = np.empty((B, T, C)), np.empty((B, NH, T))
    attention_forward(out, lse, rest + bias)
    dout = rng.standard_normal((B, T, C))
    dbias = np.full(3 * C, 2.0)
    attention_backward(np.empty((B, T, 3 * C)), dout, rest + bias, out, lse, dqkv_bias=dbias)
    o2, l2 = np.empty_like(out), np.empty_like(lse)
    f = lambda: (attention_forward(o2, l2, rest + bias), np.sum(o2 * dout))[1]
    assert_grad(f, bias, dbias - 2, rng, name="qkv bias")


# -------------------------------------------------------------------------------------- gelu
def test_gelu(rng):
    inp = rng.standard_normal((B, T, 4 * C)) * 2
    out = np.empty_like(inp)
    gelu_forward(out, inp)
    oracle = 0.5 * inp * (1 + np.tanh(np.sqrt(2 / np.pi) * (inp + 0.044715 * inp ** 3)))
    np.testing.assert_allclose(out, oracle, rtol=1e-14, atol=1e-15)
    dout = rng.standard_normal(inp.shape)
    dinp = np.full_like(inp, 3.0)                                # overwritten
    gelu_backward(dinp, inp, dout)
    f = lambda: (gelu_forward(out, inp), np.sum(out * dout))[1]
    assert_grad(f, inp, dinp, rng, name="inp")


def test_matmul_gelu(rng, split):
    """The fc layer's fast forms against the plain ones: matmul_gelu_forward is matmul_forward with the
    bias, then gelu_forward; matmul_backward with pre_gelu sends dinp on through gelu_backward. Its
    gradients by finite differences through the whole composition."""
    inp, w, b = rng.standard_normal((B, T, C)), rng.standard_normal((4 * C, C)) * 0.5, rng.standard_normal(4 * C)
    out, pre = np.empty((B, T, 4 * C)), np.empty((B, T, 4 * C))
    matmul_gelu_forward(out, pre, inp, w, b)
    pre_ref, out_ref = np.empty_like(pre), np.empty_like(out)
    matmul_forward(pre_ref, inp, w, b)
    gelu_forward(out_ref, pre_ref)
    np.testing.assert_allclose(pre, pre_ref, rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(out, out_ref, rtol=1e-14, atol=1e-13)
    wp = rng.standard_normal((C, 4 * C)) * 0.5
    dout = rng.standard_normal((B, T, C))
    dinp, dwp, dbp = np.full_like(pre, 3.0), np.zeros((C, 4 * C)), np.zeros(C)   # dinp overwritten
    matmul_backward(dinp, dwp, dbp, dout, out, wp, pre)
    dgelu, want = np.empty_like(pre), np.empty_like(pre)
    matmul_backward(dgelu, np.zeros_like(dwp), None, dout, out, wp)
    gelu_backward(want, pre, dgelu)
    np.testing.assert_allclose(dinp, want, rtol=1e-13, atol=1e-13)
    proj = np.empty((B, T, C))

    def f():                                   # fcproj(gelu(fc(inp)))
        matmul_gelu_forward(out, pre, inp, w, b)
        matmul_forward(proj, out, wp, None)
        return np.sum(proj * dout)
    dw, db, dx = np.zeros_like(w), np.zeros_like(b), np.empty_like(inp)
    matmul_backward(dx, dw, db, dinp, inp, w)
    assert_grad(f, inp, dx, rng, name="inp")
    assert_grad(f, b, db, rng, name="bias")
    assert_grad(f, w, dw, rng, name="weight")


# ---------------------------------------------------------------------------------- residual
def test_residual(rng):
    a, b = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    out = np.empty_like(a)
    residual_forward(out, a, b)
    np.testing.assert_array_equal(out, a + b)
    dout = rng.standard_normal(a.shape)
    da, db = np.ones_like(a), np.ones_like(b)                    # both accumulate
    residual_backward(da, db, dout)
    f = lambda: (residual_forward(out, a, b), np.sum(out * dout))[1]
    assert_grad(f, a, da - 1, rng, name="inp1")
    assert_grad(f, b, db - 1, rng, name="inp2")


def test_residual_layernorm(split):
    """The fused op is its composition: inp + proj + proj_bias, then layernorm; residual may be proj."""
    rng = np.random.default_rng(1)
    inp, proj = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    proj_bias, w, b = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    residual, out, mean, rstd = np.empty((B, T, C)), np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    residual_layernorm_forward(residual, out, mean, rstd, inp, proj, proj_bias, w, b)
    x = inp + proj + proj_bias
    np.testing.assert_allclose(residual, x, rtol=1e-15, atol=1e-15)
    oracle = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(out, oracle, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, x.mean(-1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(-1) + 1e-5), rtol=1e-12)
    out2, mean2, rstd2 = np.empty_like(out), np.empty_like(mean), np.empty_like(rstd)
    residual_layernorm_forward(proj, out2, mean2, rstd2, inp, proj, proj_bias, w, b)   # in place, as the model
    np.testing.assert_array_equal(proj, residual)
    np.testing.assert_array_equal(out2, out)


# -------------------------------------------------------------------------------- classifier
def test_classifier(rng, split):
    logits = rng.standard_normal((B, T, Vp)) * 3
    logits[..., V:] += 50.0                                      # padding: would dominate if it counted
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    x = logits[..., :V]
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    oracle = log_z - np.take_along_axis(x, targets[..., None], -1)[..., 0]   # -log softmax[target]

    probs = np.empty_like(logits)
    softmax_forward(probs, logits, V)
    np.testing.assert_allclose(probs[..., :V], np.exp(x - log_z[..., None]), rtol=1e-12)
    np.testing.assert_array_equal(probs[..., V:], 0.0)

    losses, lse, kept = np.empty((B, T)), np.empty((B, T)), logits.copy()
    crossentropy_forward(losses, lse, logits, targets, V)
    np.testing.assert_allclose(losses, oracle, rtol=1e-12)
    np.testing.assert_allclose(lse, log_z, rtol=1e-12)
    np.testing.assert_array_equal(logits, kept)                  # the forward only reads the logits

    dloss = 1.0 / (B * T)
    dlogits = np.full_like(logits, 9.0)                          # overwritten
    crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V)
    np.testing.assert_array_equal(dlogits[..., V:], 0.0)        # padded columns get nothing
    lse2 = np.empty((B, T))
    f = lambda: (crossentropy_forward(losses, lse2, logits, targets, V), losses.mean())[1]
    assert_grad(f, logits, dlogits, rng, name="logits")
    # in place, as the model calls it: dlogits written over the logits gives the same values
    crossentropy_softmax_backward(logits, logits, lse, targets, dloss, V)
    np.testing.assert_array_equal(logits, dlogits)