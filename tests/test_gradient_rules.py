"""Rules every backward keeps, each checked a second way: the wte gradient of a token that appears at
many positions is the sum of their gradients (a loop written here, not np.add.at); parameter gradients
and the residual stream accumulate (+=) into what the buffers already hold; bf16 rounding is
round-to-nearest-even as ml_dtypes rounds it (an implementation independent of llmnp's bit arithmetic)."""
import numpy as np
import pytest

from llmnp.checkpoint import bf16_bits_to_float32, float32_to_bf16_bits
from llmnp.encoder import encoder_backward
from llmnp.layernorm import layernorm_backward, layernorm_forward
from llmnp.matmul import matmul_backward
from llmnp.residual import residual_backward

B, T, C, Vp = 3, 5, 4, 8


@pytest.mark.parametrize("tokens", [
    np.full((B, T), 6),                                            # one token everywhere
    np.tile([1, 2, 1, 1, 7], (B, 1)),                               # repeats within and across rows
    np.arange(B * T).reshape(B, T) % 3,
])
def test_wte_gradient_sums_every_position_of_a_token(tokens):
    rng = np.random.default_rng(0)
    tokens = tokens.astype(np.int32)
    dout = rng.standard_normal((B, T, C))
    start_wte, start_wpe = rng.standard_normal((Vp, C)), rng.standard_normal((T + 2, C))
    dwte, dwpe = start_wte.copy(), start_wpe.copy()
    encoder_backward(dwte, dwpe, dout, tokens)
    want_wte, want_wpe = start_wte.copy(), start_wpe.copy()
    for b in range(B):
        for t in range(T):
            want_wte[tokens[b, t]] += dout[b, t]
            want_wpe[t] += dout[b, t]
    np.testing.assert_allclose(dwte, want_wte, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dwpe, want_wpe, rtol=1e-13, atol=1e-13)
    unused = sorted(set(range(Vp)) - set(tokens.ravel().tolist()))
    np.testing.assert_array_equal(dwte[unused], start_wte[unused])


def test_residual_backward_adds_to_both_inputs():
    rng = np.random.default_rng(1)
    dout = rng.standard_normal((B, T, C))
    d1, d2 = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    want1, want2 = d1 + dout, d2 + dout
    residual_backward(d1, d2, dout)
    np.testing.assert_array_equal(d1, want1)
    np.testing.assert_array_equal(d2, want2)
    residual_backward(d1, d2, dout)                                 # twice: twice the gradient
    np.testing.assert_allclose(d1, want1 + dout, rtol=1e-15)


def test_layernorm_backward_adds_into_the_residual_stream():
    """In the model the stream's gradient is one buffer that each layernorm backward adds to."""
    rng = np.random.default_rng(2)
    inp, w, b = rng.standard_normal((B, T, C)), rng.standard_normal(C), rng.standard_normal(C)
    out, mean, rstd = np.empty((B, T, C)), np.empty((B, T)), np.empty((B, T))
    layernorm_forward(out, mean, rstd, inp, w, b)
    dout = rng.standard_normal((B, T, C))
    fresh = [np.zeros((B, T, C)), np.zeros(C), np.zeros(C)]
    layernorm_backward(*fresh, dout, inp, w, mean, rstd)
    start = [rng.standard_normal((B, T, C)), rng.standard_normal(C), rng.standard_normal(C)]
    held = [a.copy() for a in start]
    layernorm_backward(*held, dout, inp, w, mean, rstd)
    for h, s, f in zip(held, start, fresh):
        np.testing.assert_allclose(h, s + f, rtol=1e-13, atol=1e-13)


def test_matmul_backward_adds_to_weight_and_bias_and_overwrites_dinp():
    rng = np.random.default_rng(3)
    OC = 6
    inp, w, dout = rng.standard_normal((B, T, C)), rng.standard_normal((OC, C)), rng.standard_normal((B, T, OC))
    dinp, dw, db = rng.standard_normal((B, T, C)), rng.standard_normal((OC, C)), rng.standard_normal(OC)
    dw0, db0 = dw.copy(), db.copy()
    matmul_backward(dinp, dw, db, dout, inp, w)
    x, g = inp.reshape(-1, C), dout.reshape(-1, OC)
    np.testing.assert_allclose(dinp.reshape(-1, C), np.einsum("no,oc->nc", g, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw0 + np.einsum("no,nc->oc", g, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db0 + g.sum(0), rtol=1e-12, atol=1e-12)


def test_bf16_rounding_matches_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, size=20_000, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000
    x = np.concatenate([bits, ties, ties ^ 0x10000]).view(np.float32)
    x = x[~np.isnan(x)]
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16_bits(x), want)
    np.testing.assert_array_equal(bf16_bits_to_float32(want), want.view(ml_dtypes.bfloat16).astype(np.float32))
    nan = float32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_bits_to_float32(nan)).all()
