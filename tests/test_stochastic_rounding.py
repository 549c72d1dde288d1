"""Stochastic rounding of bf16 weights from their fp32 master copy (llm.c rounds so too): unbiased,
always one of the two neighbouring bf16 values, and it keeps updates smaller than half a bf16 step
that round-to-nearest drops. The GPU kernel is checked bit for bit against this reference in
test_cuda.py (test_adamw_and_global_norm) and the model's update in test_model_rounding_on_the_gpu."""
import ml_dtypes
import numpy as np
import pytest

from conftest import requires_gpu
from llmnp.adamw import stochastic_round_bf16

BF16 = ml_dtypes.bfloat16


def neighbours(x):
    """The bf16 values just below and above float32 x (x > 0, not a bf16 value)."""
    lo = (np.float32(x).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return lo, (lo.view(np.uint32) + np.uint32(0x10000)).view(np.float32)


@pytest.mark.parametrize("x", [1.0 + 0.1 * 2**-7, 1.0 + 0.5 * 2**-7, 1.0 + 0.9 * 2**-7, 3.3e-5, -2.71828, 1234.567])
def test_unbiased_and_one_of_the_two_neighbours(x):
    n = 200_000
    out = stochastic_round_bf16(np.full(n, x, np.float32), seed=7).astype(np.float64)
    lo, hi = sorted(neighbours(abs(x)))
    lo, hi = (lo, hi) if x > 0 else (-hi, -lo)
    assert set(np.unique(out)) <= {float(lo), float(hi)}
    p_up = (abs(np.float32(x)) - abs(lo if x > 0 else hi)) / (hi - lo)     # distance past the lower magnitude
    sigma = (hi - lo) * np.sqrt(p_up * (1 - p_up) / n)
    assert abs(out.mean() - np.float32(x)) < 5 * sigma, (out.mean(), x, sigma)


def test_values_that_bf16_holds_and_special_values_stay():
    x = np.array([0.0, -0.0, 1.0, -2.0, 0.5, np.inf, -np.inf, 3.0e38], np.float32).astype(BF16).astype(np.float32)
    out = stochastic_round_bf16(x, seed=3)
    assert np.array_equal(out.astype(np.float32), x)
    assert np.isnan(stochastic_round_bf16(np.array([np.nan], np.float32), seed=3).astype(np.float32)).all()


def test_seed_and_position_choose_the_draws():
    x = np.full(1000, 1.0 + 0.5 * 2**-7, np.float32)
    a, b = stochastic_round_bf16(x, seed=1), stochastic_round_bf16(x, seed=2)
    assert not np.array_equal(a, b)
    assert np.array_equal(stochastic_round_bf16(x, seed=1), a)                      # deterministic
    assert np.array_equal(stochastic_round_bf16(x[500:], seed=1, offset=500), a[500:])   # a slice rounds alike


def test_small_updates_survive_where_round_to_nearest_drops_them():
    """Weights kept in bf16 alone (-w 0) at 1.0, where a bf16 step is 2^-7 = 0.0078, take 1000 updates
    of +1e-4: rounded to nearest every time, they never move; rounded stochastically they reach 1.1
    on average, as the fp32 sum does."""
    nearest = np.ones(4096, np.float32).astype(BF16)
    stochastic = nearest.copy()
    for t in range(1000):
        nearest = (nearest.astype(np.float32) + np.float32(1e-4)).astype(BF16)
        stochastic = stochastic_round_bf16(stochastic.astype(np.float32) + np.float32(1e-4), seed=t)
    assert np.all(nearest.astype(np.float32) == 1.0)
    assert abs(stochastic.astype(np.float64).mean() - 1.1) < 0.01


@requires_gpu
def test_model_rounding_on_the_gpu():
    """The model's bf16 update: each tensor's parameters are its master weights rounded stochastically
    with that step's seed, indexed by position in the flat buffer."""
    from llmnp import GPT2, GPT2Config
    from llmnp.model import rounding_seed
    model = GPT2(GPT2Config.tiny(), device="cuda", dtype="bfloat16", seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, (2, 16))
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    model.update(1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
    master, params = model.master_memory.get(), model.params_memory.get()
    offset = 0
    for name, shape in model.param_specs:
        n = int(np.prod(shape))
        want = stochastic_round_bf16(master[offset:offset + n], rounding_seed(1, name), offset)
        assert np.array_equal(params[offset:offset + n].view(np.uint16), want.view(np.uint16)), name
        offset += n


def lowbias32_reference(index, seed):
    """rounding_bits for one index, from the hash's definition in Python integers (masking to 32 bits):
    the index's two 32-bit halves folded (high half times 0x9E3779B9), the seed xor-ed in, then
    lowbias32 (xorshift 16, multiply 0x7FEB352D, xorshift 15, multiply 0x846CA68B, xorshift 16)."""
    M = 0xFFFFFFFF
    x = (index & M) ^ (((index >> 32) * 0x9E3779B9) & M) ^ seed
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M
    x ^= x >> 15
    x = (x * 0x846CA68B) & M
    x ^= x >> 16
    return x & 0xFFFF


def test_rounding_bits_are_the_lowbias32_hash():
    from llmnp.adamw import rounding_bits
    index = np.array([0, 1, 2, 12345, 2**31 + 7, 2**32 - 1, 2**32, 2**32 + 5, 3 * 2**40 + 99, 2**63 + 11],
                     dtype=np.uint64)
    for seed in (0, 1, 0x9E3779B1, 0xFFFFFFFF):
        got = rounding_bits(index, seed)
        assert [int(b) for b in got] == [lowbias32_reference(int(i), seed) for i in index]


def test_rounding_takes_any_float_array_and_keeps_its_shape():
    """float64 input is rounded from its float32 value; a 2-D array keeps its shape and element order
    (element (i, j) draws the bits of offset + i * columns + j)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5))
    got = stochastic_round_bf16(x, seed=9, offset=40)
    assert got.shape == (3, 5) and got.dtype == BF16
    flat = stochastic_round_bf16(x.astype(np.float32).ravel(), seed=9, offset=40)
    np.testing.assert_array_equal(got.ravel().view(np.uint16), flat.view(np.uint16))
