"""Details of the model a user relies on beyond its gradients: the device a reader builds on, the bf16
update's stochastic rounding (its seed per step and tensor, its position per element), and ZeRO-1
shards that start or end on a tensor boundary."""
import ml_dtypes
import numpy as np
import pytest

from conftest import requires_gpu
from llmnp import GPT2, GPT2Config
from llmnp.adamw import stochastic_round_bf16
from llmnp.params import PARAMETER_NAMES

TINY = GPT2Config.tiny(vocab_size=20, max_seq_len=8, num_layers=2, num_heads=2, channels=8, pad_to=8)
DEVICES = ["cpu", pytest.param("cuda", marks=requires_gpu)]


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def tensor_slices(model):
    """(name, start, end) of each parameter tensor in the flat buffer, in table order."""
    out, offset = [], 0
    for name, shape in model.param_specs:
        n = int(np.prod(shape))
        out.append((name, offset, offset + n))
        offset += n
    return out


def test_load_builds_the_model_on_the_device_asked_for(tmp_path):
    """GPT2.load passes the device on: an unknown device is refused with the constructor's message,
    not silently read onto the CPU."""
    path = str(tmp_path / "m.bin")
    GPT2(TINY, seed=0).save_checkpoint(path)
    assert GPT2.load(path, device="cpu").device == "cpu"
    with pytest.raises(ValueError) as e:
        GPT2.load(path, device="tpu")
    assert str(e.value) == "unknown device 'tpu': use 'cpu' or 'cuda'"


def seed_of(t, name):
    """Step t's rounding seed of one tensor: xxHash32's first two primes, t * 0x9E3779B1 + (index of the
    tensor in the table) * 0x85EBCA77, mod 2^32. Fixed, so a run resumed from a checkpoint (by this or
    a later version, on either device) rounds as the uninterrupted run did."""
    return (t * 2654435761 + PARAMETER_NAMES.index(name) * 2246822519) % 2**32


@pytest.mark.parametrize("t", [1, 3])
def test_bf16_update_rounds_each_tensor_with_its_step_seed_and_flat_position(t):
    """bf16 parameters after an update are their float32 master weights rounded stochastically, each
    tensor with its seed for step t, each element drawing the bits of its position in the flat buffer."""
    model = GPT2(TINY, dtype="bfloat16", seed=0)
    model.zero_grad()
    g = np.random.default_rng(5).standard_normal(model.num_parameters).astype(np.float32)
    model.grads_memory[...] = g.astype(ml_dtypes.bfloat16)
    model.update(1e-2, 0.9, 0.95, 1e-8, 0.1, t)
    master, params = model.master_memory, model.params_memory
    for name, lo, hi in tensor_slices(model):
        want = stochastic_round_bf16(master[lo:hi], seed_of(t, name), offset=lo)
        assert np.array_equal(params[lo:hi].view(np.uint16), want.view(np.uint16)), name


def test_rounding_seed_values():
    """The seeds of a few (step, tensor) pairs, worked out by hand: wte is tensor 0, wpe tensor 1."""
    from llmnp.model import rounding_seed
    assert rounding_seed(1, "wte") == 0x9E3779B1
    assert rounding_seed(0, "wpe") == 0x85EBCA77
    assert rounding_seed(2, "wpe") == 0xC25ABDD9                  # 2 * 0x9E3779B1 + 0x85EBCA77 = 0x1C25ABDD9


@pytest.mark.parametrize("device", DEVICES)
def test_shard_on_tensor_boundaries_updates_exactly_its_tensors(device):
    """A ZeRO-1 shard that starts where one tensor ends and ends where another starts updates those
    tensors only, as the whole-buffer update does them (float32 here, the GPU's AdamW dtype)."""
    full = GPT2(TINY, device=device, seed=1)
    shard = GPT2(TINY, device=device, seed=1)
    g = np.random.default_rng(2).standard_normal(full.num_parameters).astype(np.float32)
    for model in (full, shard):
        model.zero_grad()
        model.grads_memory[...] = model.xp.asarray(g)
    bounds = {name: (lo, hi) for name, lo, hi in tensor_slices(full)}
    start, end = bounds["ln1w"][0], bounds["qkvb"][1]        # ln1w, ln1b, qkvw, qkvb
    shard.set_shard(start, end)
    p0 = host(shard.params_memory).copy()
    full.update(1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    shard.update(1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    p, want = host(shard.params_memory), host(full.params_memory)
    np.testing.assert_array_equal(p[:start], p0[:start])
    np.testing.assert_array_equal(p[end:], p0[end:])
    np.testing.assert_array_equal(p[start:end], want[start:end])
    assert not np.array_equal(p[start:end], p0[start:end])
    m, v, _ = shard.optimizer_state_to_host()
    np.testing.assert_array_equal(m, host(full.m_memory)[start:end])
    np.testing.assert_array_equal(v, host(full.v_memory)[start:end])


@pytest.mark.parametrize("dtype, recompute, shards", [("float32", 1, 1), ("float32", 0, 2), ("bfloat16", 2, 1),
                                                      ("bfloat16", 1, 2)])
def test_allocate_takes_the_bytes_the_estimate_counts(dtype, recompute, shards):
    """allocate(B, T) takes what memory.training_bytes counts, buffer for buffer: AdamW's m and v in
    float32 (the state dtype of float32 and bf16 models), one shard's worth under ZeRO-1."""
    from llmnp.memory import training_bytes
    model = GPT2(TINY, dtype=dtype, seed=0, recompute=recompute)
    model.set_shard(0, model.num_parameters // shards)
    model.allocate(2, 8)
    assert model.m_memory.dtype == model.v_memory.dtype == np.float32
    buffers = (model.params_memory, model.master_memory, model.grads_memory, model.dwte, model.m_memory,
               model.v_memory, model.acts_memory, model.stats_memory, model.dacts_memory)
    used = sum(a.nbytes for a in buffers if a is not None)
    assert used == training_bytes(TINY, 2, 8, model.dtype, np.float32, recompute, shards)


def test_backward_needs_a_new_forward_each_time():
    """backward() needs a forward with targets just before: on a new model, and a second time (the logits
    then hold dlogits), it is refused."""
    model = GPT2(TINY, dtype=np.float64, seed=0)
    with pytest.raises(RuntimeError, match=r"^backward\(\) needs a forward\(inputs, targets\) with targets first$"):
        model.backward()
    x = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 8))
    model.forward(x, x)
    model.backward()
    assert model.mean_loss is None
    with pytest.raises(RuntimeError) as e:
        model.backward()
    assert str(e.value) == "backward() needs a forward(inputs, targets) with targets first"


# ------------------------------------------------------------------------------ the CPU layers
def test_attention_covers_batches_longer_than_the_sequence():
    """Every batch row gets its output (the per-head textbook formula) and its gradient (float64 finite
    differences) when B is larger than T."""
    from gradcheck import assert_grad
    from test_layers import attention_oracle
    from llmnp.attention import attention_backward, attention_forward
    rng = np.random.default_rng(0)
    B, T, C, NH = 5, 2, 4, 2
    qkv = rng.standard_normal((B, T, 3 * C))
    out, lse = np.empty((B, T, C)), np.empty((B, NH, T))
    attention_forward(out, lse, qkv)
    np.testing.assert_allclose(out, attention_oracle(qkv, NH), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal((B, T, C))
    dqkv = np.full((B, T, 3 * C), 7.0)                           # overwritten
    attention_backward(dqkv, dout, qkv, out, lse)
    o2, l2 = np.empty_like(out), np.empty_like(lse)
    assert_grad(lambda: (attention_forward(o2, l2, qkv), np.sum(o2 * dout))[1], qkv, dqkv, rng, name="qkv")
    assert not np.any(dqkv == 7.0)


def test_crossentropy_covers_more_positions_than_vocabulary():
    """Loss, log-sum-exp and dlogits at every position when B*T is larger than V (float64 oracle)."""
    from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward
    rng = np.random.default_rng(1)
    B, T, V, Vp = 3, 4, 5, 8
    logits = rng.standard_normal((B, T, Vp)) * 2
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    x = logits[..., :V]
    log_z = np.log(np.exp(x).sum(-1))
    losses, lse = np.full((B, T), 9.0), np.full((B, T), 9.0)
    crossentropy_forward(losses, lse, logits, targets, V)
    np.testing.assert_allclose(lse, log_z, rtol=1e-12)
    np.testing.assert_allclose(losses, log_z - np.take_along_axis(x, targets[..., None], -1)[..., 0], rtol=1e-12)
    dloss = 1.0 / (B * T)
    want = np.zeros((B, T, Vp))
    want[..., :V] = np.exp(x - log_z[..., None]) - np.eye(V)[targets]
    dlogits = np.full((B, T, Vp), 9.0)
    crossentropy_softmax_backward(dlogits, logits, lse, targets, dloss, V)
    np.testing.assert_allclose(dlogits, want * dloss, rtol=1e-12, atol=1e-15)


def peak_bytes(fn):
    """Peak bytes allocated (NumPy reports its arrays to tracemalloc) while fn() runs."""
    import tracemalloc
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_crossentropy_loss_allocates_a_few_rows_not_the_logits(monkeypatch):
    """The loss walks the logits in blocks of rows: no (B*T, V) temporary (1 MB here), whatever the
    number of threads."""
    from llmnp.classifier import crossentropy_forward
    monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
    rng = np.random.default_rng(2)
    N, V = 256, 1000
    logits = rng.standard_normal((1, N, V)).astype(np.float32)
    targets = rng.integers(0, V, (1, N)).astype(np.int32)
    losses, lse = np.empty((1, N), np.float32), np.empty((1, N), np.float32)
    assert peak_bytes(lambda: crossentropy_forward(losses, lse, logits, targets, V)) < logits.nbytes // 8


def test_dweight_product_goes_through_at_most_16_mb():
    """matmul_backward's dweight product uses a float32 scratch of at most 4M elements (16 MB), even for
    one row of 3M channels: a row a product."""
    from llmnp.matmul import matmul_backward
    C = 3_000_000
    rng = np.random.default_rng(3)
    inp = rng.standard_normal((1, 1, C), dtype=np.float32)
    weight = np.zeros((2, C), np.float32)
    dweight = np.ones((2, C), np.float32)
    dout = np.array([[[0.5, -2.0]]], np.float32)
    assert peak_bytes(lambda: matmul_backward(None, dweight, None, dout, inp, weight)) <= 4 * 2**22 + 2**16
    np.testing.assert_array_equal(dweight, 1.0 + dout[0, 0][:, None] * inp[0])      # exact: powers of 2


class PoolSpy:
    """Counts the parts parallel.py hands to its thread pool (the first part runs on the caller's thread)."""

    def __init__(self, pool):
        self.pool, self.submitted = pool, 0

    def submit(self, *args):
        self.submitted += 1
        return self.pool.submit(*args)


def layer_calls(rng):
    """{case: (threads, call, parts it should run in)}: each layer at a small size that still fills the threads."""
    from llmnp.attention import attention_backward, attention_forward
    from llmnp.classifier import crossentropy_forward, crossentropy_softmax_backward
    from llmnp.gelu import bias_gelu_forward, gelu_backward_blocked
    from llmnp.layernorm import layernorm_backward, layernorm_forward
    from llmnp.matmul import matmul_backward
    qkv, out, lse = rng.standard_normal((2, 4, 12)), np.empty((2, 4, 4)), np.empty((2, 1, 4))    # B=2, NH=1
    attention_forward(out, lse, qkv)
    x, mean, rstd = rng.standard_normal((64, 8)), np.zeros(64), np.ones(64)                      # 64 rows
    logits, targets = rng.standard_normal((1, 8, 5)), np.zeros((1, 8), np.int32)                 # 8 rows, V=5
    losses, lse8 = np.empty((1, 8)), np.empty((1, 8))

    def dweight(OC, C):
        inp, w, dw, dout = np.ones((1, C)), np.zeros((OC, C)), np.zeros((OC, C)), np.ones((1, OC))
        return lambda: matmul_backward(None, dw, None, dout, inp, w)

    def bias_gelu(N, OC):
        x, b = np.ones((N, OC), np.float32), np.zeros(OC, np.float32)
        return lambda: bias_gelu_forward(np.empty_like(x), x, b)

    def gelu_backward(N, OC):
        x = np.ones((N, OC), np.float32)
        return lambda: gelu_backward_blocked(np.empty_like(x), x, x)
    return {
        "attention forward": (2, lambda: attention_forward(np.empty_like(out), np.empty_like(lse), qkv), 2),
        "attention backward": (2, lambda: attention_backward(np.empty_like(qkv), out, qkv, out, lse), 2),
        "layernorm forward": (2, lambda: layernorm_forward(np.empty_like(x), mean.copy(), rstd.copy(), x,
                                                          np.ones(8), np.zeros(8)), 2),
        "layernorm backward": (2, lambda: layernorm_backward(np.zeros_like(x), np.zeros(8), np.zeros(8), x, x,
                                                            np.ones(8), mean, rstd), 2),
        "crossentropy forward": (2, lambda: crossentropy_forward(losses, lse8, logits, targets, 5), 2),
        "crossentropy backward": (2, lambda: crossentropy_softmax_backward(np.empty_like(logits), logits, lse8,
                                                                         targets, 0.1, 5), 2),
        "dweight 16 x 4096": (2, dweight(16, 4096), 2),
        "dweight 24 x 4096, 4 threads": (4, dweight(24, 4096), 3),
        "dweight 2 x 65536": (2, dweight(2, 65536), 2),
        "bias and gelu 16 x 4096": (2, bias_gelu(16, 4096), 2),
        "bias and gelu 2 x 32768": (2, bias_gelu(2, 32768), 2),
        "gelu backward 16 x 4096": (2, gelu_backward(16, 4096), 2),
        "gelu backward 2 x 32768": (2, gelu_backward(2, 32768), 2),
    }


@pytest.mark.parametrize("case", ["attention forward", "attention backward", "layernorm forward", "layernorm backward",
                                  "crossentropy forward", "crossentropy backward", "dweight 16 x 4096",
                                  "dweight 24 x 4096, 4 threads", "dweight 2 x 65536",
                                  "bias and gelu 16 x 4096", "bias and gelu 2 x 32768",
                                  "gelu backward 16 x 4096", "gelu backward 2 x 32768"])
def test_cpu_layers_spread_small_work_over_the_threads(monkeypatch, case):
    """Each CPU layer splits its rows over LLMNP_NUM_THREADS threads as soon as each gets its minimum
    (one batch row in attention, 32 rows in layernorm, 4 in the loss, 32K elements of dweight or of
    GELU's gradient)."""
    import llmnp.parallel
    threads, call, parts = layer_calls(np.random.default_rng(0))[case]
    monkeypatch.setenv("LLMNP_NUM_THREADS", str(threads))
    spy = PoolSpy(llmnp.parallel._executor())
    monkeypatch.setattr(llmnp.parallel, "_executor", lambda: spy)
    call()
    assert spy.submitted == parts - 1


def test_save_checkpoint_writes_the_dtype_asked_for_from_the_master_weights(tmp_path):
    """save_checkpoint writes llm.c's float32 file (version 3) by default and its bf16 file (version 5)
    when asked; a bf16 model writes its float32 master weights, not their bf16 rounding."""
    model = GPT2(TINY, dtype="bfloat16", seed=0)
    n = model.num_parameters
    assert not np.array_equal(model.master_memory, model.params_memory.astype(np.float32))
    model.save_checkpoint(str(tmp_path / "f32.bin"))
    model.save_checkpoint(str(tmp_path / "bf16.bin"), dtype="bfloat16")
    f32 = (tmp_path / "f32.bin").read_bytes()
    header = np.frombuffer(f32[:1024], "<i4")
    assert header[0] == 20240326 and header[1] == 3 and len(f32) == 1024 + 4 * n
    np.testing.assert_array_equal(np.frombuffer(f32[1024:], "<f4"), model.master_memory)
    bf16 = (tmp_path / "bf16.bin").read_bytes()
    assert np.frombuffer(bf16[:1024], "<i4")[1] == 5 and len(bf16) == 1024 + 2 * n
    np.testing.assert_array_equal(model.parameters_to_host(), model.master_memory)
    assert model.parameters_to_host().dtype == np.float32


def test_gelu_gradient_covers_more_rows_than_columns_in_blocks_of_rows(monkeypatch):
    """gelu_backward_blocked (the fc layer's backward) gives dout * gelu'(x) on every row when rows
    outnumber columns (float64 oracle: the derivative of 0.5 x (1 + tanh(s (x + 0.044715 x^3)))), and its
    temporaries are blocks of 32K elements (a few per thread), not the (N, OC) size of its input (4 MB)."""
    from llmnp.gelu import gelu_backward_blocked
    monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((6, 3)) * 2, rng.standard_normal((6, 3))
    s = np.sqrt(2 / np.pi)
    th = np.tanh(s * (x + 0.044715 * x**3))
    want = dout * (0.5 * (1 + th) + 0.5 * x * (1 - th**2) * s * (1 + 3 * 0.044715 * x**2))
    dinp = np.full_like(x, 9.0)
    gelu_backward_blocked(dinp, x, dout)
    np.testing.assert_allclose(dinp, want, rtol=1e-12, atol=1e-15)
    big = rng.standard_normal((1024, 1024)).astype(np.float32)
    assert peak_bytes(lambda: gelu_backward_blocked(big, big, big)) < big.nbytes // 2


def test_forward_names_the_bad_array_in_its_message():
    """A bad batch is refused with a message naming inputs or targets, its shape and the vocabulary."""
    model = GPT2(TINY, dtype=np.float64, seed=0)
    cases = [((np.zeros(5, np.int32), None), "inputs must be an int array of shape (B, T), got (5,)"),
             ((np.array([[0, 20]]), None), "inputs hold token ids outside [0, 20)"),
             ((np.zeros((2, 8)), np.zeros((2, 7))), "targets must be an int array of shape (2, 8), got (2, 7)"),
             ((np.zeros((2, 8)), np.full((2, 8), -1)), "targets hold token ids outside [0, 20)")]
    for (inputs, targets), message in cases:
        with pytest.raises(ValueError) as e:
            model.forward(inputs, targets)
        assert str(e.value) == message


def test_bias_gelu_covers_more_rows_than_columns_in_blocks_of_rows(monkeypatch):
    """bias_gelu_forward (the fc layer's bias and GELU) adds the bias and applies GELU on every row when rows
    outnumber columns (float64 oracle), with temporaries of blocks of rows, not of its (N, OC) input."""
    from llmnp.gelu import bias_gelu_forward
    monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
    rng = np.random.default_rng(5)
    x, b = rng.standard_normal((6, 3)) * 2, rng.standard_normal(3)
    h = x + b
    want = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    out = np.full_like(x, 9.0)
    bias_gelu_forward(out, x, b)
    np.testing.assert_allclose(x, h, rtol=1e-15)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-15)
    big = rng.standard_normal((1024, 1024)).astype(np.float32)
    bias, gelu_out = np.zeros(1024, np.float32), np.empty_like(big)
    assert peak_bytes(lambda: bias_gelu_forward(gelu_out, big, bias)) < big.nbytes // 2


def test_a_smaller_batch_after_a_larger_one_trains_alike():
    """After a first batch of (4, 8), a (2, 4) batch runs forward and backward in the same buffers and gets
    the loss and gradients a model built for (2, 4) gets."""
    rng = np.random.default_rng(6)
    big = rng.integers(0, TINY.vocab_size, (4, 8))
    x, y = rng.integers(0, TINY.vocab_size, (2, 4)), rng.integers(0, TINY.vocab_size, (2, 4))
    used, fresh = GPT2(TINY, dtype=np.float64, seed=0), GPT2(TINY, dtype=np.float64, seed=0)
    used.forward(big, big)
    losses = []
    for model in (used, fresh):
        model.zero_grad()
        losses.append(float(model.forward(x, y)))
        model.backward()
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    np.testing.assert_allclose(used.grads_memory, fresh.grads_memory, rtol=1e-10, atol=1e-14)


def test_dtype_names_pick_the_storage():
    """A dtype given by name builds that dtype: "float32"/"float64" NumPy's, "bfloat16"/"bf16" ml_dtypes'."""
    from llmnp.model import storage_dtype
    assert storage_dtype("float32") == np.float32 and storage_dtype("float64") == np.float64
    assert storage_dtype(np.float32) == np.float32
    assert storage_dtype("bf16") == storage_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert GPT2(TINY, dtype="float32", seed=0).params_memory.dtype == np.float32


def test_to_host_casts_to_the_dtype_asked_for():
    """to_host(a) gives the array as it is; to_host(a, dtype) gives it cast to dtype."""
    model = GPT2(TINY, dtype=np.float64, seed=0)
    a = model.params_memory
    assert model.to_host(a).dtype == np.float64
    b = model.to_host(a, np.float32)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, a.astype(np.float32))


@pytest.mark.parametrize("dtype, master_weights, bytes_per_parameter", [("float32", True, 4), ("bfloat16", True, 6),
                                                                        ("bfloat16", False, 2)])
def test_a_model_too_large_for_the_machine_is_refused_before_allocating(monkeypatch, dtype, master_weights,
                                                                        bytes_per_parameter):
    """Before allocating, the model asks its device for its parameters' bytes (and the float32 master
    copy's, for bf16 with master weights) and refuses with one line saying what and how much."""
    import llmnp.memory
    from llmnp.errors import UserError
    from llmnp.params import num_parameters
    asked = []
    monkeypatch.setattr(llmnp.memory, "available_bytes", lambda device: asked.append(device) or 1000)
    n = num_parameters(TINY)
    with pytest.raises(UserError) as e:
        GPT2(TINY, dtype=dtype, master_weights=master_weights)
    need = bytes_per_parameter * n
    assert str(e.value) == (f"a 2-layer, 8-channel model ({n:,} parameters) needs {need / 1024:.1f} KiB, "
                            f"this machine has 1000 B free: choose a smaller model")
    assert asked == ["cpu"]


def test_unknown_devices_are_refused_and_cuda_is_not_one_of_them():
    """device="tpu" is refused by name; device="cuda" goes to the CUDA backend (which may fail for
    want of a GPU here, but not as an unknown device)."""
    from llmnp.model import backend
    with pytest.raises(ValueError) as e:
        GPT2(TINY, device="tpu")
    assert str(e.value) == "unknown device 'tpu': use 'cpu' or 'cuda'"
    try:
        backend("cuda")
    except Exception as e:                    # no CuPy or no GPU here
        assert "unknown device" not in str(e)


def test_constructor_defaults():
    """GPT2(config) is a float32 CPU model from seed 42, no recompute, read from no file (source None)."""
    model = GPT2(TINY)
    assert model.device == "cpu" and model.dtype == np.float32 and model.recompute == 0 and model.source is None
    np.testing.assert_array_equal(model.params_memory, GPT2(TINY, seed=42).params_memory)
    assert not np.array_equal(model.params_memory, GPT2(TINY, seed=43).params_memory)


def test_bfloat16_by_name_in_a_fresh_process():
    """dtype="bfloat16" works before anything imported ml_dtypes (NumPy alone does not know the name)."""
    import subprocess
    import sys
    code = "from llmnp.model import storage_dtype; print(storage_dtype('bfloat16'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "bfloat16"
