"""The whole model: every one of the 16 parameter gradients against float64 finite differences, float32
against float64, llm.c's init statistics, gradient accumulation, and learning (overfitting one batch)."""
import math

import numpy as np
import pytest

from gradcheck import assert_grad
from llmnp import GPT2, GPT2Config
from llmnp.params import PARAMETER_NAMES, activation_specs, num_elements

TINY = GPT2Config.tiny(vocab_size=20, max_seq_len=8, num_layers=2, num_heads=2, channels=8, pad_to=8)


def batch(config, B, T, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(B, T + 1)).astype(np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def perturbed_model(dtype=np.float64, seed=0):
    """A tiny model with O(1) random weights, biases and layernorm parameters: every gradient is far
    from 0 and well above the finite differences' rounding floor (init's 0.02 makes them ~1e-5)."""
    model = GPT2(TINY, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name in PARAMETER_NAMES:
        scale = 0.3 if name.endswith("w") and not name.startswith("ln") or name in ("wte", "wpe") else 0.1
        model.params[name][...] += scale * rng.standard_normal(model.params[name].shape)
    model.params["wte"][TINY.vocab_size:] = 0
    return model


@pytest.mark.parametrize("name", PARAMETER_NAMES)
def test_gradient_matches_finite_differences(name):
    model = perturbed_model()
    x, y = batch(TINY, B=2, T=6)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    grad = model.grads[name].copy()
    assert np.any(grad != 0), f"{name} has an all-zero gradient"
    f = lambda: float(model.forward(x, y))
    # atol: one rounding step of a loss near 3 is 4.4e-16, over 2 eps = 2e-6 that is 2.2e-10 in the
    # difference quotient; 1e-9 is a few of those. Everything above it is held to rtol 1e-6.
    assert_grad(f, model.params[name], grad, np.random.default_rng(7), rtol=1e-6, atol=1e-9, name=name)


def test_padded_vocab_rows_get_no_gradient_and_unused_positions_neither():
    model = perturbed_model()
    x, y = batch(TINY, B=2, T=6)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    np.testing.assert_array_equal(model.grads["wte"][TINY.vocab_size:], 0.0)
    np.testing.assert_array_equal(model.grads["wpe"][6:], 0.0)


def test_backward_writes_dlogits_over_the_logits():
    model = perturbed_model()
    x, y = batch(TINY, B=2, T=6)
    model.forward(x, y)
    z = model.logits[..., :TINY.vocab_size].copy()               # (B,T,V)
    model.zero_grad()
    model.backward()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(2)[:, None], np.arange(6), y] -= 1.0             # softmax - onehot, per position
    np.testing.assert_allclose(model.logits[..., :TINY.vocab_size], p / (2 * 6), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(model.logits[..., TINY.vocab_size:], 0.0)


def test_float32_agrees_with_float64():
    x, y = batch(TINY, B=2, T=8)
    results = []
    for dtype in (np.float32, np.float64):
        model = perturbed_model(dtype)
        loss = float(model.forward(x, y))
        logits = model.logits.astype(np.float64)                 # backward writes dlogits over them
        model.zero_grad()
        model.backward()
        results.append((loss, logits, model.grads_memory.astype(np.float64)))
    (l32, z32, g32), (l64, z64, g64) = results
    assert abs(l32 - l64) < 1e-5
    np.testing.assert_allclose(z32, z64, atol=1e-5)
    assert np.max(np.abs(g32 - g64)) < 1e-5 * max(1.0, np.max(np.abs(g64)))


def test_loss_at_init_is_close_to_uniform_over_gpt2_vocab():
    config = GPT2Config(max_seq_len=16, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2, channels=32)
    model = GPT2(config, seed=0)
    x, y = batch(config, B=2, T=16)
    loss = float(model.forward(x, y))
    assert abs(loss - math.log(50257)) < 0.05, loss
    assert model.logits.shape == (2, 16, 50304)


def test_init_statistics_follow_llmc():
    config = GPT2Config(max_seq_len=64, vocab_size=500, padded_vocab_size=512, num_layers=4, num_heads=4, channels=64)
    p = GPT2(config, seed=3).params
    assert abs(p["wte"][:500].std() - 0.02) < 0.001
    assert abs(p["fcw"].std() - 0.02) < 0.001
    assert abs(p["fcprojw"].std() - 0.02 / math.sqrt(2 * 4)) < 0.0005
    assert abs(p["attprojw"].std() - 0.02 / math.sqrt(2 * 4)) < 0.0005
    np.testing.assert_array_equal(p["wte"][500:], 0.0)
    for name in ("ln1w", "ln2w", "lnfw"):
        np.testing.assert_array_equal(p[name], 1.0)
    for name in ("qkvb", "attprojb", "fcb", "fcprojb", "ln1b", "lnfb"):
        np.testing.assert_array_equal(p[name], 0.0)
    np.testing.assert_array_equal(GPT2(config, seed=3).params_memory, GPT2(config, seed=3).params_memory)


def test_forward_without_targets_gives_logits_only():
    model = GPT2(TINY, dtype=np.float64)
    x, y = batch(TINY, B=2, T=5)
    assert model.forward(x) is None
    logits = model.logits.copy()
    model.forward(x, y)
    np.testing.assert_array_equal(model.logits, logits)
    with pytest.raises(RuntimeError):
        model.forward(x)
        model.backward()


def test_gradients_accumulate_and_micro_batches_add_up():
    x, y = batch(TINY, B=2, T=6)
    full = perturbed_model()
    full.forward(x, y)
    full.zero_grad()
    full.backward()
    micro = perturbed_model()
    micro.zero_grad()
    for i in range(2):                                 # two micro-batches of B=1, accumulated
        micro.forward(x[i:i + 1], y[i:i + 1])
        micro.backward(grad_accum_steps=2)
    np.testing.assert_allclose(micro.grads_memory, full.grads_memory, rtol=1e-10, atol=1e-14)
    full.forward(x, y)
    full.backward()                                    # no zero_grad: adds the same gradient again
    np.testing.assert_allclose(full.grads_memory, 2 * micro.grads_memory, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("rows", [5, 12, 100])
def test_forward_backward_in_blocks_is_forward_then_backward(rows):
    """forward_backward's classifier over blocks of `rows` of the 12 rows (5: two whole blocks and one of
    2; 12: one; 100: one, smaller than the buffer would allow) gives forward + backward's loss and
    gradients, added to what the gradients held; validate gives forward's loss and per-position losses
    and leaves the gradients alone."""
    x, y = batch(TINY, B=2, T=6)
    whole = perturbed_model()
    whole.zero_grad()
    loss = float(whole.forward(x, y))
    whole.backward(grad_accum_steps=3)
    losses = whole.acts["losses"].copy()
    model = perturbed_model()
    model.classifier_rows = rows
    model.zero_grad()
    model.grads_memory += 1.0                          # adds into what is there, as backward does
    assert float(model.forward_backward(x, y, grad_accum_steps=3)) == pytest.approx(loss, rel=1e-14)
    assert model.acts["logits"].shape == (min(rows, 12), TINY.padded_vocab_size)
    np.testing.assert_allclose(model.grads_memory, whole.grads_memory + 1.0, rtol=1e-12, atol=1e-14)
    before = model.grads_memory.copy()
    assert float(model.validate(x, y)) == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(model.acts["losses"], losses, rtol=1e-14)
    np.testing.assert_array_equal(model.grads_memory, before)
    with pytest.raises(RuntimeError, match="needs a forward"):
        model.backward()                               # validate leaves no logits for backward


def test_forward_of_more_rows_than_the_classifier_holds_gives_every_logit():
    """forward() on a batch larger than the classifier's block: (B, T, Vp) logits of their own, the same
    as a model whose block holds them all, and backward() after it the same gradients."""
    x, y = batch(TINY, B=2, T=6)
    small, big = perturbed_model(), perturbed_model()
    small.classifier_rows = 5
    for model in (small, big):
        model.forward(x, y)
        model.zero_grad()
    np.testing.assert_array_equal(small.logits, big.logits)
    assert small.logits.shape == (2, 6, TINY.padded_vocab_size)
    for model in (small, big):
        model.backward()
    np.testing.assert_array_equal(small.grads_memory, big.grads_memory)


def test_smaller_batch_reuses_buffers_and_larger_batch_errors():
    model = perturbed_model()
    x, y = batch(TINY, B=2, T=6)
    model.forward(x, y)
    small = float(model.forward(x[:1, :4], y[:1, :4]))
    assert small == pytest.approx(float(perturbed_model().forward(x[:1, :4], y[:1, :4])), rel=1e-12)
    with pytest.raises(ValueError, match="larger than"):
        model.forward(*batch(TINY, B=3, T=6))
    with pytest.raises(ValueError, match="max_seq_len"):
        GPT2(TINY).forward(*batch(TINY, B=1, T=9))
    with pytest.raises(ValueError, match="token ids"):
        GPT2(TINY).forward(np.full((1, 4), TINY.vocab_size, dtype=np.int32))


def test_overfits_one_batch():
    model = GPT2(TINY, seed=0)
    x, y = batch(TINY, B=4, T=8)
    for t in range(1, 301):
        loss = float(model.forward(x, y))
        model.zero_grad()
        model.backward()
        model.update(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0, t=t)
    assert loss < 0.1, loss


def test_gelu_recompute_gives_the_same_gradients_in_less_memory():
    x, y = batch(TINY, B=2, T=6)
    results = []
    for recompute in (0, 1):
        model = perturbed_model()
        model.recompute = recompute
        loss = float(model.forward(x, y))
        model.zero_grad()
        model.backward()
        results.append((loss, model.grads_memory.copy(), model.acts_memory.size))
    (l0, g0, n0), (l1, g1, n1) = results
    assert l0 == l1
    np.testing.assert_array_equal(g0, g1)
    L, C = TINY.num_layers, TINY.channels
    assert n0 - n1 == (L - 1) * 2 * 6 * 4 * C


@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_load_optimizer_state_restores_this_shards_state(dtype):
    """m and v of the shard as given (in the state dtype, float32); with bf16 parameters, the master
    weights of the shard too, and the parameters rounded from them; nothing outside the shard moves."""
    model = GPT2(TINY, dtype=dtype, seed=0)
    n = model.num_parameters
    lo, hi = n // 3, 2 * n // 3
    model.set_shard(lo, hi)
    before = np.array(model.params_memory, dtype=np.float64)
    rng = np.random.default_rng(0)
    m, v, master = (rng.standard_normal(hi - lo) for _ in range(3))       # float64, as a state file gives
    model.load_optimizer_state(m, v, master)
    assert model.m_memory.dtype == model.v_memory.dtype == np.float32
    np.testing.assert_array_equal(model.m_memory, m.astype(np.float32))
    np.testing.assert_array_equal(model.v_memory, v.astype(np.float32))
    after = np.array(model.params_memory, dtype=np.float64)
    np.testing.assert_array_equal(after[:lo], before[:lo])
    np.testing.assert_array_equal(after[hi:], before[hi:])
    if model.master_memory is not None:                                  # bf16: master weights
        np.testing.assert_array_equal(model.master_memory[lo:hi], master.astype(np.float32))
        np.testing.assert_array_equal(model.params_memory[lo:hi], master.astype(np.float32).astype(model.dtype))
    else:
        np.testing.assert_array_equal(after[lo:hi], before[lo:hi])      # no master: parameters stay
    with pytest.raises(ValueError, match=f"this shard has {hi - lo:,}"):
        model.load_optimizer_state(m[:-1], v[:-1])


def test_pick_device(monkeypatch):
    """cpu and cuda are taken as given; auto is cuda exactly when CuPy sees a GPU, cpu without CuPy."""
    import sys
    from conftest import gpu_available
    from llmnp.model import pick_device
    assert pick_device("cpu") == "cpu" and pick_device("cuda") == "cuda"
    assert pick_device("auto") == ("cuda" if gpu_available() else "cpu")
    monkeypatch.setitem(sys.modules, "cupy", None)                       # import cupy raises ImportError
    assert pick_device("auto") == "cpu"
    for present in (True, False):                                       # a CuPy that sees a GPU, or not
        cuda = type("cuda", (), {"is_available": staticmethod(lambda present=present: present)})
        monkeypatch.setitem(sys.modules, "cupy", type("cupy", (), {"cuda": cuda}))
        assert pick_device("auto") == ("cuda" if present else "cpu")


@pytest.mark.parametrize("reader", ["load", "from_checkpoint", "from_pretrained"])
def test_model_readers_pass_every_option_on(tmp_path, reader):
    """Each reader builds the model it is asked for: dtype, recompute and master weights as given."""
    GPT2(TINY, seed=0).save_checkpoint(str(tmp_path / "m.bin"))
    read = getattr(GPT2, reader)
    for recompute, master in ((2, False), (1, True)):
        model = read(str(tmp_path / "m.bin"), "cpu", "bfloat16", recompute, master)
        assert model.recompute == recompute and model.dtype.name == "bfloat16"
        assert (model.master_memory is not None) == master
        assert model.source == str(tmp_path / "m.bin")
    model = read(str(tmp_path / "m.bin"), dtype="bfloat16")          # the defaults: no recompute, master
    assert model.recompute == 0 and model.master_memory is not None   # weights for bf16


def test_is_finite_sees_the_master_weights_and_the_parameters():
    model = GPT2(TINY, dtype="bfloat16", seed=0)
    assert model.is_finite()
    model.master_memory[7] = np.nan                      # the parameters are still finite
    assert not model.is_finite()
    model = GPT2(TINY, seed=0)
    model.params_memory[3] = np.inf
    assert not model.is_finite()


def test_optimizer_state_leaves_as_float32_and_one_shard_only():
    """A checkpoint stores m and v in float32 whatever the model's dtype (a float64 model here); the
    ZeRO-1 shard cannot change once its state exists."""
    model = GPT2(TINY, dtype=np.float64, seed=0)
    x, y = batch(TINY, 2, 4)
    model.forward(x, y)
    model.zero_grad()
    model.backward()
    model.update(1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
    m, v, master = model.optimizer_state_to_host()
    assert m.dtype == v.dtype == np.float32 and master is None
    np.testing.assert_array_equal(m, model.m_memory.astype(np.float32))
    model.set_shard(*model.shard)                        # the same shard: fine
    with pytest.raises(RuntimeError, match="another shard"):
        model.set_shard(0, 10)


def test_recompute_2_gives_the_same_gradients_with_less_memory():
    """-r 1 (GELU) and -r 2 (GELU and the layernorms recomputed in backward): the same loss and gradients
    as keeping everything; -r 2 keeps one (B,T,C) buffer for ln1 and one for ln2 instead of L each, so
    2 (L - 1) B T C fewer activations than -r 1."""
    config = GPT2Config(max_seq_len=16, vocab_size=64, padded_vocab_size=128, num_layers=3, num_heads=2, channels=16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (2, 16)), rng.integers(0, 64, (2, 16))
    runs = []
    for r in (0, 1, 2):
        model = GPT2(config, dtype=np.float64, seed=3, recompute=r)
        loss = float(model.forward(x, y))
        model.zero_grad()
        model.backward()
        runs.append((loss, model.grads_memory.copy()))
    for loss, grads in runs[1:]:
        assert loss == runs[0][0]
        np.testing.assert_allclose(grads, runs[0][1], rtol=1e-12, atol=1e-15)
    L, B, T, C = 3, 2, 16, 16
    saved = num_elements(activation_specs(config, B, T, 1)) - num_elements(activation_specs(config, B, T, 2))
    assert saved == 2 * (L - 1) * B * T * C


def test_flops_per_token_is_llmcs_count_at_the_runs_sequence_length():
    """llm.c's MFU numerator: 6 N + 6 L C T with T the run's -t (not the model's max_seq_len), N every
    parameter including the padded vocabulary rows."""
    c = GPT2Config.tiny()
    L, C, Vp, maxT = c.num_layers, c.channels, c.padded_vocab_size, c.max_seq_len
    N = Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C
    model = GPT2(c)
    for T in (1, maxT // 2, maxT):
        assert model.flops_per_token(T) == 6 * N + 6 * L * C * T
