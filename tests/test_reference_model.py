"""The whole model against a plain float64 GPT-2 written here, sharing no code with llmnp: its own
parameter table (DESIGN.md's order, offsets counted here), per-head loops, a causal mask by slicing
(query t sees keys 0..t), layernorm, tanh GELU and cross-entropy from the formulas. GPT2.forward's
logits and loss must match it, and GPT2.backward's gradients must match its finite differences, so a
bug that forward and backward share (a mask off by one, a wrong scale) cannot hide behind the model's
own finite-difference checks, which differentiate llmnp's own forward."""
import math

import numpy as np
import pytest

from llmnp import GPT2, GPT2Config

# every size different: L=3, NH=2, hs=5, C=10, maxT=11, T=9, V=37, Vp=48, B=2
CONFIG = GPT2Config(max_seq_len=11, vocab_size=37, padded_vocab_size=48, num_layers=3, num_heads=2, channels=10)
B, T = 2, 9


def table(c):
    """(name, shape) in llm.c's order, written out from DESIGN.md, not from llmnp.params."""
    L, C, Vp, maxT = c.num_layers, c.channels, c.padded_vocab_size, c.max_seq_len
    return [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln1w", (L, C)), ("ln1b", (L, C)),
            ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)),
            ("ln2w", (L, C)), ("ln2b", (L, C)), ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
            ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)), ("lnfw", (C,)), ("lnfb", (C,))]


def unpack(flat, c):
    out, offset = {}, 0
    for name, shape in table(c):
        n = math.prod(shape)
        out[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    assert offset == flat.size
    return out


def ln(x, w, b):
    mu = sum(x) / len(x)
    var = sum((xi - mu) ** 2 for xi in x) / len(x)          # biased, as GPT-2
    return (x - mu) / math.sqrt(var + 1e-5) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def reference(flat, c, tokens, targets):
    """(logits (B,T,Vp), mean loss) of GPT-2, one sequence and one position at a time."""
    p = unpack(np.asarray(flat, np.float64), c)
    L, NH, C, V = c.num_layers, c.num_heads, c.channels, c.vocab_size
    hs = C // NH
    Bn, Tn = tokens.shape
    logits = np.zeros((Bn, Tn, c.padded_vocab_size))
    losses = []
    for b in range(Bn):
        x = [p["wte"][tokens[b, t]] + p["wpe"][t] for t in range(Tn)]                # T vectors of C
        for l in range(L):
            h = [ln(xt, p["ln1w"][l], p["ln1b"][l]) for xt in x]
            qkv = [p["qkvw"][l] @ ht + p["qkvb"][l] for ht in h]                     # 3C each
            y = []
            for t in range(Tn):
                heads = []
                for n in range(NH):
                    q = qkv[t][n * hs:(n + 1) * hs]
                    ks = [qkv[s][C + n * hs:C + (n + 1) * hs] for s in range(t + 1)]    # keys 0..t only
                    vs = [qkv[s][2 * C + n * hs:2 * C + (n + 1) * hs] for s in range(t + 1)]
                    scores = [float(q @ k) / math.sqrt(hs) for k in ks]
                    top = max(scores)
                    w = [math.exp(s - top) for s in scores]
                    heads.append(sum(wi * vi for wi, vi in zip(w, vs)) / sum(w))
                y.append(np.concatenate(heads))
            x = [xt + p["attprojw"][l] @ yt + p["attprojb"][l] for xt, yt in zip(x, y)]
            h = [ln(xt, p["ln2w"][l], p["ln2b"][l]) for xt in x]
            x = [xt + p["fcprojw"][l] @ gelu(p["fcw"][l] @ ht + p["fcb"][l]) + p["fcprojb"][l] for xt, ht in zip(x, h)]
        for t in range(Tn):
            z = p["wte"] @ ln(x[t], p["lnfw"], p["lnfb"])                               # (Vp,), tied weights
            logits[b, t] = z
            real = z[:V]                                                                # padding never counts
            top = real.max()
            losses.append(top + math.log(np.exp(real - top).sum()) - real[targets[b, t]])
    return logits, sum(losses) / len(losses)


def random_flat(c, seed):
    """O(1) weights (so attention is far from uniform and every layer matters), zero padded rows."""
    rng = np.random.default_rng(seed)
    p = unpack(rng.standard_normal(sum(math.prod(s) for _, s in table(c))), c)
    for name in p:
        p[name] *= 0.4 if name not in ("ln1w", "ln2w", "lnfw") else 0.2
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name] += 1.0
    p["wte"][c.vocab_size:] = 0.0
    return np.concatenate([p[name].ravel() for name, _ in table(c)])


def batch(seed=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, size=(B, T + 1)).astype(np.int32)
    tokens[0, 2:5] = 7                               # a repeated token: its wte row gets several gradients
    return tokens[:, :-1], tokens[:, 1:]


@pytest.fixture(scope="module")
def case():
    flat = random_flat(CONFIG, seed=0)
    x, y = batch()
    logits, loss = reference(flat, CONFIG, x, y)
    return flat, x, y, logits, loss


def test_table_matches_the_model_layout(case):
    flat = case[0]
    model = GPT2(CONFIG, dtype=np.float64, init=False)
    model.load_parameters(flat)
    ref = unpack(flat, CONFIG)
    assert [n for n, _ in table(CONFIG)] == list(model.params)
    for name, _ in table(CONFIG):
        np.testing.assert_array_equal(model.params[name], ref[name])


def test_forward_float64_matches_reference(case):
    flat, x, y, logits, loss = case
    model = GPT2(CONFIG, dtype=np.float64, init=False)
    model.load_parameters(flat)
    got = float(model.forward(x, y))
    assert abs(got - loss) <= 1e-12 * abs(loss), (got, loss)
    np.testing.assert_allclose(model.logits, logits, rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(model.logits[..., CONFIG.vocab_size:], 0.0)
    model.forward(x)                                  # without targets: the same logits
    np.testing.assert_allclose(model.logits, logits, rtol=1e-11, atol=1e-12)


def test_forward_float32_matches_reference(case):
    flat, x, y, logits, loss = case
    model = GPT2(CONFIG, dtype=np.float32, init=False)
    model.load_parameters(flat)
    got = float(model.forward(x, y))
    assert abs(got - loss) < 1e-5 * abs(loss), (got, loss)
    np.testing.assert_allclose(model.logits, logits, rtol=0, atol=2e-5 * np.abs(logits).max())


def test_prefix_positions_do_not_see_the_future(case):
    """Changing the last input token changes only the last position's logits (in the reference too)."""
    flat, x, y, logits, _ = case
    model = GPT2(CONFIG, dtype=np.float64, init=False)
    model.load_parameters(flat)
    x2 = x.copy()
    x2[:, -1] = (x2[:, -1] + 1) % CONFIG.vocab_size
    model.forward(x2)
    np.testing.assert_allclose(model.logits[:, :-1], logits[:, :-1], rtol=1e-11, atol=1e-12)
    assert np.abs(model.logits[:, -1] - logits[:, -1]).max() > 1e-3


@pytest.mark.parametrize("grad_accum_steps", [1, 3])
def test_backward_matches_reference_finite_differences(case, grad_accum_steps):
    """Along a random direction of each tensor: (ref(p + e r) - ref(p - e r)) / 2e == sum(grad * r)."""
    flat, x, y, _, _ = case
    model = GPT2(CONFIG, dtype=np.float64, init=False)
    model.load_parameters(flat)
    model.zero_grad()
    model.forward(x, y)
    model.backward(grad_accum_steps=grad_accum_steps)
    grads = unpack(model.grads_memory.copy() * grad_accum_steps, CONFIG)
    rng = np.random.default_rng(11)
    eps = 1e-5
    offset = 0
    for name, shape in table(CONFIG):
        n = math.prod(shape)
        r = np.zeros_like(flat)
        r[offset:offset + n] = rng.standard_normal(n)
        if name == "wte":
            r[CONFIG.vocab_size * CONFIG.channels:CONFIG.padded_vocab_size * CONFIG.channels] = 0
        offset += n
        numeric = (reference(flat + eps * r, CONFIG, x, y)[1] - reference(flat - eps * r, CONFIG, x, y)[1]) / (2 * eps)
        analytic = float(np.sum(unpack(r, CONFIG)[name] * grads[name]))
        assert abs(numeric - analytic) <= 1e-7 + 1e-6 * abs(numeric), (name, numeric, analytic)
    np.testing.assert_array_equal(grads["wte"][CONFIG.vocab_size:], 0.0)
    np.testing.assert_array_equal(grads["wpe"][T:], 0.0)
