"""The non-finite finder names the layer and tensor where a NaN or inf first appears: values planted in
one layer's forward and another layer's backward, a finite weight large enough to overflow, and a
broken parameter; on the CPU and (where there is one) the GPU."""
import numpy as np
import pytest

from conftest import requires_gpu
from llmnp import GPT2, GPT2Config
from llmnp.nonfinite import NonFinite, checked, locate

DEVICES = ["cpu", pytest.param("cuda", marks=requires_gpu)]


class PlantingOps:
    """A backend namespace that, on the `call`-th call (0-based) of `op`, writes `value` into element 0
    of output `index` (a position, or the name of an output passed by keyword) after the real function
    ran: a layer that produced a NaN or inf."""

    def __init__(self, ops, op, call, index, value):
        self.ops, self.op, self.call, self.index, self.value, self.calls = ops, op, call, index, value, 0

    def __getattr__(self, name):
        fn = getattr(self.ops, name)
        if name != self.op:
            return fn

        def planted(*args, **kwargs):
            fn(*args, **kwargs)
            if self.calls == self.call:
                (kwargs if isinstance(self.index, str) else args)[self.index].reshape(-1)[0] = self.value
            self.calls += 1
        return planted


def model_and_batch(device, L=3, recompute=0):
    config = GPT2Config.tiny(num_layers=L, channels=16, num_heads=2)
    model = GPT2(config, device=device, seed=0, recompute=recompute)
    rng = np.random.default_rng(0)
    x = rng.integers(0, config.vocab_size, (2, 8)).astype(np.int32)
    y = rng.integers(0, config.vocab_size, (2, 8)).astype(np.int32)
    return model, x, y


def plant(model, op, call, index, value):
    """Plant into the model's backend for every later pass (the re-run included): it counts calls of
    `op` from now on."""
    model.ops = PlantingOps(model.ops, op, call, index, value)
    return model.ops


@pytest.mark.parametrize("device", DEVICES)
def test_a_finite_step_finds_nothing(device):
    model, x, y = model_and_batch(device)
    assert locate(model, x, y, step=1) is None
    assert np.isfinite(model.grad_norm())


@pytest.mark.parametrize("device", DEVICES)
def test_planted_in_one_layers_forward(device):
    model, x, y = model_and_batch(device)
    ops = plant(model, "attention_forward", call=1, index=0, value=np.inf)   # layer 1's attention output
    with np.errstate(invalid="ignore", over="ignore"):
        assert not np.isfinite(float(model.forward(x, y)))                  # the training step's loss
    ops.calls = 0                                                           # the re-run counts afresh
    assert locate(model, x, y, step=412) == "step 412: layer 1 attention forward produced inf in atty"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recompute", [0, 2])
def test_planted_in_another_layers_backward(device, recompute):
    model, x, y = model_and_batch(device, L=3, recompute=recompute)   # -r 2: one shared ln1, ln2 buffer
    # matmul_backward's calls: the classifier's, then 4 per layer walking down from layer 2 (fcproj, fc,
    # attproj, qkv), so call 9 is layer 0's fcproj, whose dinp, through GELU, is dfch
    plant(model, "matmul_backward", call=9, index=0, value=np.nan)
    assert locate(model, x, y, step=7) == "step 7: layer 0 matmul backward produced nan in dfch"
    plant(model, "residual_layernorm_forward", call=0, index=1, value=np.inf)   # layer 0 writes ln2
    assert locate(model, x, y, step=7) == "step 7: layer 0 residual_layernorm forward produced inf in ln2"


@pytest.mark.parametrize("device", DEVICES)
def test_planted_in_a_parameter_gradient(device):
    model, x, y = model_and_batch(device, L=3)
    plant(model, "matmul_backward", call=1, index=1, value=np.inf)   # calls: classifier, then layer 2's fcproj
    assert locate(model, x, y, step=3) == "step 3: layer 2 matmul backward produced inf in dfcprojw"


def test_planted_in_an_output_passed_by_keyword():
    """The bias gradients that layernorm_backward and attention_backward sum (dproj_bias, dqkv_bias) are
    checked too (nonfinite.OUTPUT_KEYWORDS)."""
    model, x, y = model_and_batch("cpu", L=3)
    plant(model, "attention_backward", call=0, index="dqkv_bias", value=np.inf)   # layer 2's, the first
    assert locate(model, x, y, step=5) == "step 5: layer 2 attention backward produced inf in dqkvb"
    model, x, y = model_and_batch("cpu", L=3)
    plant(model, "layernorm_backward", call=0, index="dproj_bias", value=np.nan)  # lnf's: layer 2's fcproj
    assert locate(model, x, y, step=5) == "step 5: layernorm backward produced nan in dfcprojb (layer 2's)"


@pytest.mark.parametrize("device", DEVICES)
def test_a_finite_weight_that_overflows(device):
    model, x, y = model_and_batch(device)
    model.params["ln1b"][1] = 1e37        # layer 1's qkv is ~1e36, its attention scores overflow
    assert locate(model, x, y, step=2) == "step 2: layer 1 attention forward produced nan in atty"


@pytest.mark.parametrize("device", DEVICES)
def test_a_broken_parameter_is_named_without_a_rerun(device):
    model, x, y = model_and_batch(device)
    model.params["fcprojw"][2][0, 0] = np.nan
    assert locate(model, x, y, step=3) == ("step 3: parameter fcprojw of layer 2 holds nan "
                                           "(written by an earlier update, or loaded so)")


def test_micro_batches_and_checked_mode():
    model, x, y = model_and_batch("cpu")
    plant(model, "layernorm_backward", call=0, index=0, value=np.inf)    # the final layernorm, micro-batch 1
    line = locate(model, [x, x], [y, y], grad_accum_steps=2, step=9)
    assert line == "step 9: layernorm backward produced inf in dresidual"
    model, x, y = model_and_batch("cpu")
    plant(model, "matmul_forward", call=3 * 3, index=0, value=np.inf)    # after 3 layers x 3: the logits
    with pytest.raises(NonFinite, match="^matmul forward produced inf in logits$"):
        with checked(model):
            model.forward(x, y)
    assert not hasattr(model.ops, "_locator")                           # the real backend is back
