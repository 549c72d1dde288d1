"""What the trainer hands the optimizer. One step of train_gpt2.py from a zero AdamW state on a small
model whose gradient is computed here: the logged norm is the L2 norm of that gradient, the clip factor
is min(1, 1/norm), and the state file's m and v and the model file's weights are AdamW's formulas
(LLMC_FACTS: beta1 0.9, beta2 0.95, eps 1e-8, t = step + 1, bias-corrected, weight decay on the 2-D
tensors only) applied to the clipped gradient, with the warmup learning rate lr * (step + 1) / W.
Every other trainer test compares the trainer with itself (resume, accumulation, processes), which a
swapped beta or an inverted clip passes."""
import math
import re

import numpy as np
import pytest

import train_gpt2
from llmnp import GPT2, GPT2Config
from llmnp.checkpoint import load_model, load_state
from llmnp.data import write_shard
from llmnp.params import PARAMETER_NAMES
from test_data import RefMT

CONFIG = GPT2Config(max_seq_len=24, vocab_size=61, padded_vocab_size=64, num_layers=2, num_heads=4, channels=12)
B, T = 2, 16
LR, WARMUP, WD = 1e-2, 4, 0.1
DECAYED = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")       # llm.c's tensors 0, 1, 4, 6, 10, 12


def test_clip_scale():
    assert train_gpt2.clip_scale(4.0) == 0.25
    assert train_gpt2.clip_scale(1.25) == 0.8
    assert train_gpt2.clip_scale(1.0) == 1.0                    # at the threshold: unchanged
    assert train_gpt2.clip_scale(0.5) == 1.0                    # below it: never scaled up
    assert train_gpt2.clip_scale(0.0) == 1.0
    assert train_gpt2.clip_scale(3.0, max_norm=6.0) == 1.0
    assert train_gpt2.clip_scale(8.0, max_norm=2.0) == 0.25
    assert train_gpt2.clip_scale(2.0 + 1e-12) < 1.0 / 2.0 + 1e-12 and train_gpt2.clip_scale(1.0 + 1e-9) < 1.0


def test_weight_decay_groups_are_the_2d_tensors():
    from llmnp.params import DECAYED_PARAMETERS, parameter_specs
    assert set(DECAYED_PARAMETERS) == set(DECAYED)
    # as PyTorch's "dim >= 2" group, counted on the per-layer shape (the stacked L axis aside)
    stacked = {"wte", "wpe", "lnfw", "lnfb"}
    two_d = {n for n, s in parameter_specs(CONFIG) if len(s) - (n not in stacked) >= 2}
    assert two_d == set(DECAYED)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two model files, one whose first gradient norm is below 1 and one far above it, and a shard."""
    d = tmp_path_factory.mktemp("optimizer_step")
    rng = np.random.default_rng(5)
    paths = {}
    for name, wte_scale in (("small", 0.05), ("large", 100.0)):
        model = GPT2(CONFIG, seed=1)
        for p in PARAMETER_NAMES:                           # nonzero biases, layernorm weights off 1
            model.params[p][...] += 0.05 * rng.standard_normal(model.params[p].shape)
        model.params["wte"][...] *= wte_scale
        model.params["wte"][CONFIG.vocab_size:] = 0.0
        paths[name] = str(d / f"{name}.bin")
        model.save_checkpoint(paths[name])
    tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=2000)
    write_shard(str(d / "train.bin"), tokens)
    write_shard(str(d / "val.bin"), tokens[:200])
    return paths, str(d / "train.bin"), str(d / "val.bin"), tokens


def one_step(files, which, tmp_path, capsys, accum, shuffle):
    paths, train, val, _ = files
    out = str(tmp_path / "run")
    train_gpt2.main(["-e", paths[which], "-i", train, "-j", val, "-b", str(B), "-t", str(T), "-d", str(accum * B * T),
                     "-x", "1", "-sh", str(int(shuffle)), "-v", "0", "-s", "0", "-o", out, "-l", str(LR), "-u", str(WARMUP),
                     "-c", str(WD), "-k", "cosine", "-q", "0.1"])
    stdout = capsys.readouterr().out
    line = next(l for l in stdout.splitlines() if l.startswith("step "))
    norm = float(re.search(r"\| norm (\S+) ", line).group(1))
    loss = float(re.search(r"\| loss (\S+) ", line).group(1))
    lr = float(re.search(r"\| lr (\S+) ", line).group(1))
    log = open(f"{out}/main.log").read()
    logged = re.search(r"s:0 trl:(\S+) lr:(\S+) norm:(\S+)", log)
    state = load_state(f"{out}/state_00000001_00000.bin")
    _, params = load_model(f"{out}/model_00000001.bin")
    return dict(norm=norm, loss=loss, lr=lr, log_loss=float(logged.group(1)), log_lr=float(logged.group(2)),
                log_norm=float(logged.group(3)), m=state["m"], v=state["v"], step=state["step"], params=params)


def sample_order(num_samples, shuffle):
    """The order the step reads the shard's samples in: as stored, or shuffled as llm.c's loader with
    seed 42 + rank 0 (one shard: its permutation draws nothing, then the samples are permuted)."""
    order = list(range(num_samples))
    if shuffle:
        rng = RefMT(42)
        for i in range(num_samples - 1, 0, -1):
            j = rng.randint32() % (i + 1)
            order[i], order[j] = order[j], order[i]
    return order


def gradient(files, which, accum, shuffle):
    """The mean gradient of the step's accum micro-batches, and their mean loss, from the model file
    as the trainer reads it."""
    paths, _, _, tokens = files
    model = GPT2.from_checkpoint(paths[which])
    model.zero_grad()
    losses = []
    order = sample_order((len(tokens) - 1) // (B * T), shuffle)
    for i in range(accum):
        start = order[i] * B * T
        buf = tokens[start:start + B * T + 1].astype(np.int32)
        losses.append(float(model.forward(buf[:-1].reshape(B, T), buf[1:].reshape(B, T))))
        model.backward(grad_accum_steps=accum)
    return model.params_memory.astype(np.float64), model.grads_memory.astype(np.float64), sum(losses) / accum


@pytest.mark.parametrize("which, accum, shuffle, clipped", [
    ("small", 1, False, False), ("large", 1, False, True), ("large", 2, False, True), ("small", 2, True, False)])
def test_first_step_hands_adamw_the_clipped_gradient(files, tmp_path, capsys, which, accum, shuffle, clipped):
    p0, g, loss = gradient(files, which, accum, shuffle)
    got = one_step(files, which, tmp_path, capsys, accum, shuffle)
    norm = math.sqrt(float(np.sum(g * g)))
    assert (norm > 1.5) if clipped else (norm < 0.9), norm            # the case this parametrization is for
    assert abs(got["norm"] - norm) <= 5e-5 + 1e-6 * norm                # printed with 4 decimals
    assert abs(got["log_norm"] - norm) <= 5e-3                          # main.log: 2 decimals
    assert abs(got["loss"] - loss) <= 5e-7 + 1e-6 * loss and abs(got["log_loss"] - loss) <= 5e-5
    lr = LR * 1 / WARMUP                                                # step 0 of a 4-step warmup
    assert got["lr"] == float(f"{lr:.2e}") and got["log_lr"] == float(f"{lr:.6f}")
    assert got["step"] == 1

    scale = 1.0 / norm if norm > 1.0 else 1.0
    gc = g * scale                                                      # the gradient AdamW sees
    m = (1 - 0.9) * gc                                                  # from m = v = 0
    v = (1 - 0.95) * gc * gc
    np.testing.assert_allclose(got["m"], m, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(got["v"], v, rtol=1e-6, atol=1e-30)

    m_hat, v_hat = m / (1 - 0.9 ** 1), v / (1 - 0.95 ** 1)
    offsets = np.cumsum([0] + [math.prod(s) for s in (GPT2(CONFIG, init=False).params[n].shape for n in PARAMETER_NAMES)])
    decay = np.zeros_like(p0)
    for name, lo, hi in zip(PARAMETER_NAMES, offsets, offsets[1:]):
        decay[lo:hi] = WD if name in DECAYED else 0.0
    p1 = p0 - lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * p0)
    np.testing.assert_allclose(got["params"], p1, rtol=1e-6, atol=1e-9)
    moved = np.abs(got["params"] - p0)
    assert np.median(moved[g != 0]) > 0.5 * lr                          # Adam's first step: ~lr per weight


def test_norm_squared_over_several_dot_products():
    from llmnp.adamw import NORM_CHUNK, global_norm_squared
    g = np.random.default_rng(3).standard_normal(2 * NORM_CHUNK + 7).astype(np.float32)
    want = float(np.sum(g.astype(np.float64) ** 2))
    assert abs(global_norm_squared(g) - want) <= 1e-5 * want
    assert abs(global_norm_squared(g[-7:]) - float(np.sum(g[-7:].astype(np.float64) ** 2))) <= 1e-5 * want


def test_update_without_grad_scale_takes_the_gradient_as_it_is():
    model = GPT2(CONFIG, dtype=np.float64, seed=2)
    model.zero_grad()
    model.grads_memory[...] = np.random.default_rng(4).standard_normal(model.num_parameters)
    model.update(1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
    m, v, _ = model.optimizer_state_to_host()
    g = model.grads_memory
    np.testing.assert_allclose(m, (1 - 0.9) * g, rtol=1e-6)
    np.testing.assert_allclose(v, (1 - 0.95) * g * g, rtol=1e-6)


def test_shard_sum_of_squares_is_its_slice_only():
    """ZeRO-1: each process's share of the norm; the processes' shares add up to the whole."""
    model = GPT2(CONFIG, dtype=np.float64, seed=2)
    model.zero_grad()
    g = np.random.default_rng(5).standard_normal(model.num_parameters)
    model.grads_memory[...] = g
    n = model.num_parameters
    cuts = [0, n // 3, n // 3 + 1, n]
    shares = []
    for start, end in zip(cuts, cuts[1:]):
        model.set_shard(start, end)
        shares.append(model.shard_grad_squares())
        assert shares[-1] == pytest.approx(float(np.sum(g[start:end] ** 2)), rel=1e-12)
    assert math.sqrt(sum(shares)) == pytest.approx(model.grad_norm(), rel=1e-12)


def test_update_of_a_shard_touches_its_slice_with_state_of_its_size():
    model = GPT2(CONFIG, dtype=np.float64, seed=2)
    model.zero_grad()
    g = np.random.default_rng(6).standard_normal(model.num_parameters)
    model.grads_memory[...] = g
    p0 = model.params_memory.copy()
    start, end = 1000, 2500                                           # inside wte, then past it
    model.set_shard(start, end)
    model.update(1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
    m, v, _ = model.optimizer_state_to_host()
    assert m.shape == v.shape == (end - start,)
    np.testing.assert_allclose(m, 0.1 * g[start:end], rtol=1e-6)
    np.testing.assert_array_equal(model.params_memory[:start], p0[:start])
    np.testing.assert_array_equal(model.params_memory[end:], p0[end:])
    gs = g[start:end]                                                 # step 1: m_hat = g, sqrt(v_hat) = |g|
    np.testing.assert_allclose(model.params_memory[start:end], p0[start:end] - 1e-3 * gs / (np.abs(gs) + 1e-8),
                               rtol=1e-12, atol=1e-15)


def test_master_weights_take_the_update_and_bf16_parameters_a_neighbour_of_it():
    """bf16 parameters with float32 master weights: AdamW updates the masters (the formula in float64
    here), the bf16 parameters get one of the two bf16 values around each master."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    model = GPT2(CONFIG, dtype="bfloat16", seed=2)
    assert model.master_memory is not None
    model.zero_grad()
    # gradients of a few significant bits, whose squares bf16 holds exactly (the CPU's update squares
    # the bf16 gradient in bf16 arithmetic, 2^-9 relative, which this test is not about)
    rng = np.random.default_rng(7)
    g = (rng.choice([-1.5, -1.0, -0.75, 0.75, 1.0, 1.5], model.num_parameters)
         * 2.0 ** rng.integers(-6, 3, model.num_parameters)).astype(np.float32)
    model.grads_memory[...] = g.astype(ml_dtypes.bfloat16)
    g = model.grads_memory.astype(np.float64)                         # the bf16 gradient AdamW reads
    master0 = model.master_memory.astype(np.float64)
    model.update(1e-2, 0.9, 0.95, 1e-8, 0.0, 1, grad_scale=0.5)
    want = master0 - 1e-2 * (0.5 * g) / (np.abs(0.5 * g) + 1e-8)
    ulp = float(np.spacing(np.float32(np.abs(master0).max() + 1e-2)))   # float32 rounding at the largest master
    np.testing.assert_allclose(model.master_memory, want, rtol=1e-6, atol=2 * ulp)
    m, v, master = model.optimizer_state_to_host()
    np.testing.assert_allclose(m, 0.1 * 0.5 * g, rtol=1e-6)
    np.testing.assert_array_equal(master, model.master_memory)
    p = model.params_memory.astype(np.float64)
    x = model.master_memory.astype(np.float64)
    down = model.master_memory.astype(ml_dtypes.bfloat16).astype(np.float64)     # nearest, one side of x
    assert np.all(np.abs(p - x) <= np.abs(x) * 2.0 ** -7 + 1e-30)               # within one bf16 step
    assert np.mean(p != down) < 0.6 and np.any(p != x)


@pytest.mark.parametrize("weight_decay", [0.0, 1.0, 0.25])
def test_adamw_update_defaults_to_no_scale_and_decays_at_any_rate(weight_decay):
    from llmnp.adamw import adamw_update
    rng = np.random.default_rng(8)
    p0, g = rng.standard_normal(300), rng.standard_normal(300)
    p, m, v = p0.copy(), np.zeros(300), np.zeros(300)
    adamw_update(p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, weight_decay, 1)             # grad_scale left out
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-12)
    np.testing.assert_allclose(v, 0.05 * g * g, rtol=1e-12)
    np.testing.assert_allclose(p, p0 - 1e-2 * (g / (np.abs(g) + 1e-8) + weight_decay * p0), rtol=1e-12, atol=1e-15)
