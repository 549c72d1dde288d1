"""Where a NaN or inf first appears: a step's micro-batches run again with a check after every layer
call, forward and backward, and one line names the step, the layer and the tensor:

    step 412: layer 7 attention forward produced inf in atty

How: for the re-run only, the model's backend namespace (model.ops) is swapped for CheckedOps, which
calls the real function and then checks the arrays it wrote. Every op's outputs come first in its
signature (OUTPUTS says how many), or are keywords OUTPUT_KEYWORDS names; which buffer an output is,
and of which layer, is read off its address inside the model's tables (model.acts, model.dacts,
model.grads). model.py itself is not touched, and a run that does not ask for the checks does not pay
for them.

Names: activations as in params.activation_specs (atty, fch, residual3, ...), activation gradients as in
params.gradient_scratch_specs (dqkv, dfch, ...), parameter gradients d + the parameter's name (dqkvw),
the logits buffer dlogits once backward has written over it.
Not here: stopping the run or what to print around the line (train_gpt2.py decides).
"""
import warnings
from contextlib import contextmanager

import dataclasses

import numpy as np

from llmnp.params import activation_specs, parameter_specs

# how many leading arguments of each backend function it writes; functions not listed are not checked
OUTPUTS = {
    "encoder_forward": 1, "encoder_backward": 2,
    "layernorm_forward": 3, "layernorm_backward": 3, "residual_layernorm_forward": 4,
    "matmul_forward": 1, "matmul_gelu_forward": 2, "matmul_backward": 3,
    "attention_forward": 2, "attention_backward": 1,
    "gelu_forward": 1, "gelu_backward": 1,
    "residual_forward": 1, "residual_backward": 2,
    "softmax_forward": 1, "crossentropy_forward": 2, "crossentropy_softmax_backward": 1,
    "crossentropy_forward_backward": 2, "add_into": 1,
}
OUTPUT_KEYWORDS = {"layernorm_backward": ("dproj_bias",), "attention_backward": ("dqkv_bias",)}   # outputs by keyword



def stacked(config, recompute=0):
    """The names of the tensors stacked over layers, (L, ...): those whose shape in the tables changes with
    the number of layers (so ln1 and fch_gelu only where -r keeps them per layer)."""
    more = dataclasses.replace(config, num_layers=config.num_layers + 1)
    names = set()
    for specs in (lambda c: parameter_specs(c), lambda c: activation_specs(c, 1, 1, recompute)):
        names |= {name for (name, shape), (_, shape_more) in zip(specs(config), specs(more)) if shape != shape_more}
    return names


class NonFinite(Exception):
    """A backend call wrote NaN or inf: str() is 'layer 7 attention forward produced inf in atty'."""

    def __init__(self, op, layer, tensor, kind):
        self.op, self.layer, self.tensor, self.kind = op, layer, tensor, kind
        where = f"layer {layer} " if layer is not None else ""
        name = op.rsplit("_", 1)
        super().__init__(f"{where}{name[0]} {name[1]} produced {kind} in {tensor}")


def nonfinite_kind(xp, a):
    """None when every element of a is finite, else 'nan' (any NaN) or 'inf'."""
    if bool(xp.isfinite(a).all()):
        return None
    return "nan" if bool(xp.isnan(a).any()) else "inf"


def _address(a):
    """The address of an array's first element, NumPy or CuPy."""
    ptr = getattr(getattr(a, "data", None), "ptr", None)     # CuPy: a.data is a MemoryPointer
    return int(ptr) if ptr is not None else a.__array_interface__["data"][0]


class Locator:
    """Which named buffer (and layer) of a model an array lies in, by its address."""

    def __init__(self, model):
        self.model = model

    def regions(self):
        """[(name, start, nbytes, layered)] of the model's current tables."""
        m = self.model
        layers = stacked(m.config, m.recompute)
        out = [(name, view, name in layers) for name, view in getattr(m, "acts", {}).items()]
        out += [(name, view, False) for name, view in getattr(m, "dacts", {}).items()]
        out += [("d" + name, view, name in layers) for name, view in (m.grads or {}).items()]
        out += [(name, view, name in layers) for name, view in m.params.items()]
        return [(name, _address(view), view.nbytes, layered, view) for name, view, layered in out]

    def find(self, a, regions=None):
        """(name, layer or None) of the buffer array a lies in, or (None, None)."""
        addr = _address(a)
        for name, start, nbytes, layered, view in regions if regions is not None else self.regions():
            if start <= addr < start + nbytes:
                layer = (addr - start) // (nbytes // view.shape[0]) if layered and view.shape[0] else None
                return name, None if layer is None else int(layer)
        return None, None


class CheckedOps:
    """A backend namespace that checks, after each call, the arrays the call wrote, and raises NonFinite
    at the first NaN or inf. Everything else passes through to `ops`."""

    def __init__(self, ops, model):
        self._ops, self._model, self._locator = ops, model, Locator(model)

    def __getattr__(self, name):
        fn = getattr(self._ops, name)
        if name not in OUTPUTS:
            return fn

        def checked(*args, **kwargs):
            fn(*args, **kwargs)
            written = args[:OUTPUTS[name]] + tuple(kwargs.get(k) for k in OUTPUT_KEYWORDS.get(name, ()))
            self._check(name, written, args)
        checked.__name__ = name
        return checked

    def _check(self, op, outputs, args):
        xp = self._model.xp
        for a in outputs:
            if a is None or not hasattr(a, "dtype"):
                continue
            kind = nonfinite_kind(xp, a)
            if kind is None:
                continue
            regions = self._locator.regions()
            tensor, tensor_layer = self._locator.find(a, regions)
            layer = self._layer(op, args, regions)
            if tensor is None:
                tensor = "an unnamed buffer"
            elif tensor == "logits" and op.endswith("_backward"):
                tensor = "dlogits"             # backward writes dlogits over the logits
            if tensor_layer is not None and tensor_layer != layer:
                tensor += f" (layer {tensor_layer}'s)"
            raise NonFinite(op, layer, tensor, kind)

    def _layer(self, op, args, regions):
        """The layer a call works on: that of its first per-layer output; else that of the weights it
        reads (None for wte, wpe and the final layernorm's); else that of its first per-layer input."""
        found = [self._locator.find(a, regions) if hasattr(a, "dtype") and a.ndim > 0 else (None, None)
                 for a in args]
        outputs, inputs = found[:OUTPUTS[op]], found[OUTPUTS[op]:]
        for _, layer in outputs:
            if layer is not None:
                return layer
        for name, layer in inputs:
            if name in self._model.params:
                return layer
        return next((layer for _, layer in inputs if layer is not None), None)


@contextmanager
def checked(model):
    """Within the block, every backend call of `model` is checked (CheckedOps); NonFinite propagates."""
    ops = model.ops
    model.ops = CheckedOps(ops, model)
    try:
        yield model
    finally:
        model.ops = ops


def nonfinite_parameter(model):
    """'parameter qkvw of layer 3 holds nan' for the first parameter tensor (in table order) holding NaN
    or inf, else None: a step whose weights are already broken needs no re-run to say so."""
    layers = stacked(model.config)
    for name, view in model.params.items():
        kind = nonfinite_kind(model.xp, view)
        if kind is None:
            continue
        if name in layers:
            layer = next(l for l in range(view.shape[0]) if nonfinite_kind(model.xp, view[l]) is not None)
            return f"parameter {name} of layer {layer} holds {kind}"
        return f"parameter {name} holds {kind}"
    return None


def locate(model, inputs, targets, grad_accum_steps=1, step=None):
    """Run a step's micro-batches again with a check after every layer, forward and backward, and return
    the line naming the first NaN or inf ('step 412: layer 7 attention forward produced inf in atty'),
    or None when the re-run is finite throughout (the value came from elsewhere: another process's
    gradients, or a reduction that overflowed).

    inputs, targets: the int32 (B, T) arrays of one micro-batch, or lists of them (the step's micro-batches,
    in order). The model's gradients are zeroed and recomputed; its weights are not updated."""
    if not isinstance(inputs, (list, tuple)):
        inputs, targets = [inputs], [targets]
    prefix = f"step {step}: " if step is not None else ""
    broken = nonfinite_parameter(model)
    if broken is not None:
        return prefix + broken + " (written by an earlier update, or loaded so)"
    # overflow warnings are expected here (the layers' worker threads have their own errstate)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            with checked(model):
                model.zero_grad()
                for x, y in zip(inputs, targets):
                    model.forward_backward(x, y, grad_accum_steps)
        except NonFinite as e:
            return prefix + str(e)
    return None
