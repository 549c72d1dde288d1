"""GPT-2: the forward pass, the backward pass and the AdamW update, written once for both devices.

Every layer is a function of a backend namespace `ops`: llmnp.layers (NumPy) on the CPU, llmnp.cuda
(CuPy kernels) on the GPU, with the same names and arguments. Buffers come from the tables of
params.py and are allocated once: parameters at construction, gradients at the first backward,
AdamW state at the first update, activations at the first forward for that (B, T).

Gradient rule (both devices): parameter gradients accumulate (+=) until zero_grad(), so micro-batches
add up; activation gradients are scratch, one layer's worth, reused as backward walks down, except
dlogits (B, T, Vp), which backward writes over the logits: the loss is computed from the logits and the
softmax recomputed in backward from each row's log-sum-exp (llm.c's fused classifier), so no
probabilities are kept, and after backward() model.logits holds dlogits.

Two ways through a training step, the same numbers (tests/test_model.py):
    forward(inputs, targets); backward()      every layer in turn, the (B, T, Vp) logits whole
    forward_backward(inputs, targets)         what training runs: the layers' forward, then the
        classifier over blocks of at most classifier_rows rows (logits, then the loss and dlogits in one
        call, then the classifier's two products), then the layers' backward. The logits are never
        whole: (classifier_rows, Vp) instead of (B*T, Vp), 0.8 GiB instead of 6.1 at d12, B=64, bf16.
validate(inputs, targets) is the loss alone, over the same blocks, the gradients untouched.

Not here: the training loop, schedules and logging (train_gpt2.py), file formats (checkpoint.py).
"""
import math

import numpy as np

from llmnp import layers
from llmnp.memory import model_bytes, require
from llmnp.params import (CLASSIFIER_ROWS, DECAYED_PARAMETERS, PARAMETER_NAMES, STATISTICS, activation_specs, allocate,
                          gradient_scratch_specs, make_views, num_elements, num_parameters, parameter_specs)


def storage_dtype(dtype):
    """np.dtype of a dtype or its name; "bfloat16" (or "bf16") comes from ml_dtypes."""
    if isinstance(dtype, str) and dtype in ("bfloat16", "bf16"):
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def pick_device(name):
    """"cpu", "cuda", or "auto": cuda when CuPy sees a GPU, else cpu."""
    if name != "auto":
        return name
    try:
        import cupy
        return "cuda" if cupy.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def backend(device):
    """(xp, ops) for a device: the array module and the layer namespace."""
    if device == "cpu":
        return np, layers
    if device == "cuda":
        from llmnp import cuda
        return cuda.xp(), cuda
    raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


class GPT2:
    classifier_rows = CLASSIFIER_ROWS              # rows of logits forward_backward and validate hold at once

    def __init__(self, config, device="cpu", dtype=np.float32, seed=42, init=True, recompute=0, master_weights=True):
        self.config = config
        self.recompute = recompute                 # 1: recompute GELU in backward, 2: GELU and layernorms
        self.device = device
        self.dtype = storage_dtype(dtype)          # parameters, gradients, activations
        # statistics, AdamW state and master weights: float32 when the storage is narrower (bf16)
        self.state_dtype = np.dtype(np.float32) if self.dtype.itemsize < 4 else self.dtype
        self.xp, self.ops = backend(device)
        require(model_bytes(config, self.dtype, self.state_dtype if master_weights else self.dtype), device,
                f"a {config.num_layers}-layer, {config.channels}-channel model ({num_parameters(config):,} parameters)",
                "choose a smaller model")      # before allocating, so a typo like d2000 is one line
        self.param_specs = parameter_specs(config)
        self.params_memory, self.params = allocate(self.param_specs, self.dtype, self.xp)  # (num_parameters,)
        self.num_parameters = self.params_memory.size
        # the float32 copy AdamW updates when the parameters are stored in bf16 (None otherwise)
        # (master_weights=False, llm.c's -w 0: AdamW updates the bf16 parameters themselves)
        self.master_memory = (self.xp.zeros(self.num_parameters, dtype=self.state_dtype)
                              if self.state_dtype != self.dtype and master_weights else None)
        self.shard = (0, self.num_parameters)      # the slice update() owns (ZeRO-1 narrows it)
        self.source = None                         # the file load() read the weights from
        if init:
            self.init_weights(seed)
        self.grads_memory = self.grads = None      # same layout as params, at the first backward
        self.dwte = None                           # float32 (Vp, C), with the gradients
        self.m_memory = self.v_memory = None       # AdamW state, at the first update
        self.acts_memory = None                    # activations, at allocate() or the first forward
        self.B = self.T = 0                        # the (B, T) the activations were allocated for
        self.mean_loss = None

    # ----------------------------------------------------------------------------------- init
    def init_weights(self, seed):
        """llm.c's init: N(0, 0.02) weights, the two residual projections N(0, 0.02/sqrt(2L)),
        zero biases, layernorm weights 1. Drawn with NumPy's generator (not torch's) from `seed`."""
        rng = np.random.default_rng(seed)
        L, V = self.config.num_layers, self.config.vocab_size
        flat = np.empty(self.num_parameters, dtype=np.float32)   # drawn in float32: 4 bytes a parameter
        host = make_views(flat, self.param_specs)
        for name, shape in self.param_specs:
            if name.endswith("w") and name.startswith("ln"):
                host[name][...] = 1.0
            elif name.endswith("b"):
                host[name][...] = 0.0
            else:
                std = 0.02 / math.sqrt(2 * L) if name in ("attprojw", "fcprojw") else 0.02
                rng.standard_normal(out=host[name], dtype=np.float32)
                host[name] *= std
        host["wte"][V:] = 0.0                      # padded vocab rows stay zero, as in llm.c's files
        self.load_parameters(flat)

    def load_parameters(self, flat):
        """Copy a flat host array in table order into the parameter buffer."""
        flat = np.asarray(flat)
        if flat.shape != (self.num_parameters,):
            raise ValueError(f"expected {self.num_parameters} parameters, got {flat.size}")
        self.params_memory[...] = self.xp.asarray(flat.astype(self.dtype, copy=False))
        if self.master_memory is not None:
            self.master_memory[...] = self.xp.asarray(flat.astype(self.state_dtype, copy=False))

    def parameters_to_host(self):
        """The flat parameter buffer as a float32/float64 NumPy array (for saving): the master weights
        where the parameters are stored in bf16."""
        if self.master_memory is not None:
            return self.to_host(self.master_memory)
        return self.to_host(self.params_memory)

    def is_finite(self):
        """Whether every parameter (and master weight) is a finite number: a diverged model is not."""
        arrays = [self.params_memory] + ([] if self.master_memory is None else [self.master_memory])
        return all(bool(self.xp.isfinite(a).all()) for a in arrays)

    def to_host(self, a, dtype=None):
        """A NumPy array of one of this model's arrays (a copy from the GPU; the array itself on the CPU),
        cast to dtype first where given (on the device: bf16 never has to cross)."""
        if dtype is not None:
            a = a.astype(dtype)
        return a if self.xp is np else self.xp.asnumpy(a)

    # ------------------------------------------------------------------------------- files
    @classmethod
    def load(cls, path, device="cpu", dtype=np.float32, recompute=0, master_weights=True):
        """A model from any model path (checkpoint.read_weights: an llm.c .bin, HF weights, or a training
        folder's latest complete checkpoint); model.source is the file it read."""
        from llmnp.checkpoint import read_weights
        config, flat, source = read_weights(path)
        model = cls(config, device=device, dtype=dtype, init=False, recompute=recompute, master_weights=master_weights)
        model.load_parameters(flat)
        model.source = source
        return model

    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype=np.float32, recompute=0, master_weights=True):
        """A model from an llm.c model file (.bin, fp32 version 3 or bf16 version 5): load()."""
        return cls.load(path, device, dtype, recompute, master_weights)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=np.float32, recompute=0, master_weights=True):
        """A model from Hugging Face GPT-2 weights, a model.safetensors or a folder holding one: load()."""
        return cls.load(path, device, dtype, recompute, master_weights)

    def save_checkpoint(self, path, dtype="float32"):
        """Write an llm.c model file: dtype "float32" (version 3) or "bfloat16" (version 5)."""
        from llmnp.checkpoint import save_model
        save_model(path, self.config, self.parameters_to_host(), dtype=dtype)

    # ----------------------------------------------------------------------------- buffers
    def allocate(self, B, T):
        """Everything a training step needs, up front (as llm.c allocates): activations for batches of up
        to (B, T), the gradients, and AdamW's m and v for this process's shard (set_shard first under
        ZeRO-1). Without it, forward, backward and update allocate what they need when first called."""
        self._activations(B, T)
        self._allocate_grads()
        self._allocate_optimizer_state()
        return self

    @property
    def batch_shape(self):
        """(B, T) the activations hold, or None before they are allocated."""
        return None if self.acts_memory is None else (self.B, self.T)

    def set_shard(self, start, end):
        """The slice [start, end) of the flat buffer this process's update() owns (ZeRO-1); AdamW's m and
        v hold that slice only. The model is its one owner: distributed.py reads it from here."""
        if self.m_memory is not None and (start, end) != self.shard:
            raise RuntimeError("set_shard() after the AdamW state exists for another shard")
        self.shard = (start, end)

    def _activations(self, B, T):
        """Views of the activation and activation-gradient tables for (B, T), allocated once for the
        largest (B, T) seen first; a smaller (B, T) uses the front of the same memory."""
        specs, stats = _split_statistics(activation_specs(self.config, B, T, self.recompute, self.classifier_rows))
        gspecs = gradient_scratch_specs(self.config, B, T)
        if self.acts_memory is None:
            self.B, self.T = B, T
            self.acts_memory = self.xp.zeros(num_elements(specs), dtype=self.dtype)
            self.stats_memory = self.xp.zeros(num_elements(stats), dtype=self.state_dtype)
            self.dacts_memory = self.xp.zeros(num_elements(gspecs), dtype=self.dtype)
            self.inputs = self.xp.zeros((B, T), dtype=np.int32)
            self.targets = self.xp.zeros((B, T), dtype=np.int32)
        elif B > self.B or T > self.T:
            raise ValueError(f"batch (B={B}, T={T}) is larger than the (B={self.B}, T={self.T}) this "
                             f"model allocated activations for at its first forward; build a new model")
        self.acts = make_views(self.acts_memory[:num_elements(specs)], specs)
        self.acts.update(make_views(self.stats_memory[:num_elements(stats)], stats))
        self.dacts = make_views(self.dacts_memory[:num_elements(gspecs)], gspecs)

    def _allocate_grads(self):
        if self.grads_memory is None:
            self.grads_memory, self.grads = allocate(self.param_specs, self.dtype, self.xp)
            # forward_backward's classifier gradient (Vp, C), summed over its blocks in float32 (bf16: once
            # rounded into grads["wte"], as one product over all rows would be)
            self.dwte = self.xp.zeros(self.grads["wte"].shape, dtype=self.state_dtype)

    def _allocate_optimizer_state(self):
        if self.m_memory is None:
            start, end = self.shard
            self.m_memory = self.xp.zeros(end - start, dtype=self.state_dtype)   # (end - start,)
            self.v_memory = self.xp.zeros(end - start, dtype=self.state_dtype)

    # ----------------------------------------------------------------------------- forward
    def forward(self, inputs, targets=None):
        """inputs, targets: int32 (B, T) token ids (NumPy arrays). Fills model.logits (B, T, Vp);
        with targets, returns the mean loss as a 0-d array of the device (float() to read it),
        without, returns None. Tokens must be < vocab_size, T <= max_seq_len. The loss is computed from
        the logits without touching them; a backward() after it overwrites them with dlogits.
        The logits live in the classifier's buffer when B*T <= classifier_rows (generation, HellaSwag,
        small batches), else in a (B, T, Vp) array of their own."""
        B, T = self._forward_layers(inputs)
        a, ops, Vp = self.acts, self.ops, self.config.padded_vocab_size
        rows = a["logits"].shape[0]
        logits = a["logits"].reshape(B, T, Vp) if rows == B * T else self.xp.empty((B, T, Vp), self.dtype)
        ops.matmul_forward(logits, a["lnf"], self.params["wte"], None)                         # (B,T,Vp), tied wte
        self.logits = logits
        if targets is None:
            self.y = None
            self.mean_loss = None
            return None
        y = self._targets(targets, B, T)
        ops.crossentropy_forward(a["losses"], a["logits_lse"], logits, y, self.config.vocab_size)   # no probs kept
        self.mean_loss = a["losses"].mean()
        return self.mean_loss

    def _forward_layers(self, inputs):
        """The forward pass up to the final layernorm's output lnf (B,T,C); returns (B, T)."""
        cfg = self.config
        inputs = self._check_tokens(inputs, "inputs")
        B, T = inputs.shape
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length T={T} exceeds the model's max_seq_len={cfg.max_seq_len}")
        self._activations(B, T)
        p, a, ops = self.params, self.acts, self.ops
        x = self.inputs if (B, T) == (self.B, self.T) else self.xp.empty((B, T), np.int32)   # preallocated: exact fit
        x[...] = self.xp.asarray(inputs)
        self.x = x
        ops.encoder_forward(a["encoded"], x, p["wte"], p["wpe"])
        ops.layernorm_forward(self._ln(1, 0), a["ln1_mean"][0], a["ln1_rstd"][0], a["encoded"],
                              p["ln1w"][0], p["ln1b"][0])
        # the projections leave their bias out: the residual add after them puts it in, in one call with
        # the layernorm that follows; the fc product, its bias and GELU are one call
        for l in range(cfg.num_layers):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]    # (B,T,C); ln1[l] is its layernorm
            ops.matmul_forward(a["qkv"][l], self._ln(1, l), p["qkvw"][l], p["qkvb"][l])           # (B,T,3C)
            ops.attention_forward(a["atty"][l], a["att_lse"][l], a["qkv"][l])                     # (B,T,C)
            ops.matmul_forward(a["residual2"][l], a["atty"][l], p["attprojw"][l], None)
            # residual2 = residual + attproj + attprojb, then ln2 = layernorm(residual2)
            ops.residual_layernorm_forward(a["residual2"][l], self._ln(2, l), a["ln2_mean"][l], a["ln2_rstd"][l],
                                           residual, a["residual2"][l], p["attprojb"][l], p["ln2w"][l], p["ln2b"][l])
            fch_gelu = self._fch_gelu(l)                                                         # (B,T,4C)
            # fch = ln2 @ fcw^T + fcb, fch_gelu = gelu(fch)
            ops.matmul_gelu_forward(fch_gelu, a["fch"][l], self._ln(2, l), p["fcw"][l], p["fcb"][l])
            ops.matmul_forward(a["residual3"][l], fch_gelu, p["fcprojw"][l], None)
            # residual3 = residual2 + fcproj + fcprojb, then the next layernorm: layer l+1's ln1, or lnf
            out, mean, rstd, w, b = self._next_layernorm(l)
            ops.residual_layernorm_forward(a["residual3"][l], out, mean, rstd,
                                           a["residual2"][l], a["residual3"][l], p["fcprojb"][l], w, b)
        return B, T

    def _targets(self, targets, B, T):
        """targets checked and on the device, in the preallocated buffer where (B, T) fits it exactly."""
        y = self.targets if (B, T) == (self.B, self.T) else self.xp.empty((B, T), np.int32)
        y[...] = self.xp.asarray(self._check_tokens(targets, "targets", shape=(B, T)))
        self.y = y
        return y

    def _classifier_blocks(self, B, T):
        """[(rows, logits)] of the classifier's blocks: each a slice of the B*T rows and the front of the
        (classifier_rows, Vp) logits buffer it uses."""
        logits = self.acts["logits"]
        n = logits.shape[0]
        return [(slice(i, min(i + n, B * T)), logits[:min(n, B * T - i)]) for i in range(0, B * T, n)]

    def validate(self, inputs, targets):
        """The mean loss (a 0-d device array) of a batch, the classifier's logits made a block of rows at a
        time (never (B, T, Vp) whole); model.acts["losses"] holds each position's. Gradients untouched."""
        B, T = self._forward_layers(inputs)
        y = self._targets(targets, B, T).reshape(-1)
        a, ops, C = self.acts, self.ops, self.config.channels
        lnf, losses, lse = a["lnf"].reshape(-1, C), a["losses"].reshape(-1), a["logits_lse"].reshape(-1)
        for rows, logits in self._classifier_blocks(B, T):
            ops.matmul_forward(logits, lnf[rows], self.params["wte"], None)                    # (rows,Vp)
            ops.crossentropy_forward(losses[rows], lse[rows], logits, y[rows], self.config.vocab_size)
        self.logits = self.mean_loss = None          # nothing for backward(): the logits are not whole
        return a["losses"].mean()

    def forward_backward(self, inputs, targets, grad_accum_steps=1):
        """One training micro-step: forward(inputs, targets) and backward(grad_accum_steps) in one, the
        classifier a block of rows at a time (its logits never (B, T, Vp) whole): each block's logits,
        then its losses and dlogits in one call (written over the logits), then the classifier's two
        products. Adds the gradients into model.grads; returns the mean loss (a 0-d device array)."""
        B, T = self._forward_layers(inputs)
        y = self._targets(targets, B, T).reshape(-1)
        self._allocate_grads()
        cfg, p, g, a, d, ops = self.config, self.params, self.grads, self.acts, self.dacts, self.ops
        dloss = 1.0 / (B * T * grad_accum_steps)
        lnf, dlnf, losses = a["lnf"].reshape(-1, cfg.channels), d["dln"].reshape(-1, cfg.channels), a["losses"].reshape(-1)
        self.dwte.fill(0)                            # the classifier's wte gradient, summed over blocks in float32
        for rows, logits in self._classifier_blocks(B, T):
            ops.matmul_forward(logits, lnf[rows], p["wte"], None)                              # (rows,Vp)
            ops.crossentropy_forward_backward(losses[rows], logits, logits, y[rows], dloss, cfg.vocab_size)
            ops.matmul_backward(dlnf[rows], self.dwte, None, logits, lnf[rows], p["wte"])     # logits: dlogits
        ops.add_into(g["wte"], self.dwte)
        self._backward_layers()
        self.logits = self.mean_loss = None
        return a["losses"].mean()

    def _next_layernorm(self, l):
        """The layernorm that reads layer l's output: layer l+1's ln1, or lnf after the last layer, as
        (out (B,T,C), mean (B,T), rstd (B,T), weight (C,), bias (C,))."""
        a, p = self.acts, self.params
        if l + 1 < self.config.num_layers:
            n = l + 1
            return self._ln(1, n), a["ln1_mean"][n], a["ln1_rstd"][n], p["ln1w"][n], p["ln1b"][n]
        return a["lnf"], a["lnf_mean"], a["lnf_rstd"], p["lnfw"], p["lnfb"]

    def _ln(self, which, l):
        """Layer l's ln1 or ln2 output (which = 1 or 2): its own slice, or with recompute 2 the one shared
        (B,T,C) buffer, which backward refills (_recompute_ln) before it reads it."""
        buf = self.acts[f"ln{which}"]
        return buf if self.recompute >= 2 else buf[l]

    def _recompute_ln(self, which, l, inp):
        """recompute 2: layer l's ln1 or ln2 again from its input (mean and rstd come out as they were)."""
        if self.recompute >= 2:
            a, p = self.acts, self.params
            self.ops.layernorm_forward(self._ln(which, l), a[f"ln{which}_mean"][l], a[f"ln{which}_rstd"][l], inp,
                                       p[f"ln{which}w"][l], p[f"ln{which}b"][l])
        return self._ln(which, l)

    def _fch_gelu(self, l):
        """Layer l's GELU output: its own slice, or with recompute the one shared (B,T,4C) buffer."""
        return self.acts["fch_gelu"] if self.recompute >= 1 else self.acts["fch_gelu"][l]

    def _check_tokens(self, tokens, what, shape=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or (shape is not None and tokens.shape != shape):
            raise ValueError(f"{what} must be an int array of shape {shape or '(B, T)'}, got {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"{what} hold token ids outside [0, {self.config.vocab_size})")
        return tokens.astype(np.int32, copy=False)

    # ---------------------------------------------------------------------------- backward
    def zero_grad(self):
        self._allocate_grads()
        self.grads_memory.fill(0)

    def backward(self, grad_accum_steps=1):
        """Adds d(mean loss)/d(parameter) into model.grads, the loss being averaged over B*T positions
        and grad_accum_steps micro-batches. Needs the forward just before it to have had targets.
        Overwrites model.logits with dlogits (the logits buffer is the gradient's, as in llm.c)."""
        if self.mean_loss is None:
            raise RuntimeError("backward() needs a forward(inputs, targets) with targets first")
        self._allocate_grads()
        cfg = self.config
        B, T = self.y.shape
        p, g, a, d, ops = self.params, self.grads, self.acts, self.dacts, self.ops
        dloss = 1.0 / (B * T * grad_accum_steps)
        dlogits = self.logits                                       # written over the logits (B,T,Vp)
        ops.crossentropy_softmax_backward(dlogits, self.logits, a["logits_lse"], self.y, dloss, cfg.vocab_size)
        ops.matmul_backward(d["dln"], g["wte"], None, dlogits, a["lnf"], p["wte"])
        self._backward_layers()
        self.mean_loss = None                                       # model.logits now hold dlogits

    def _backward_layers(self):
        """The backward pass from d["dln"], the gradient of the final layernorm's output, down to the
        embeddings."""
        cfg = self.config
        p, g, a, d, ops = self.params, self.grads, self.acts, self.dacts, self.ops
        L = cfg.num_layers
        d["dresidual"].fill(0)
        # each layernorm backward also sums the rows of the residual gradient it leaves: the bias gradient of
        # the projection below it, whose dout that gradient is (so that projection's matmul_backward has none)
        ops.layernorm_backward(d["dresidual"], g["lnfw"], g["lnfb"], d["dln"], a["residual3"][-1], p["lnfw"], a["lnf_mean"], a["lnf_rstd"],
                               dproj_bias=g["fcprojb"][L - 1])
        dres = d["dresidual"]                                       # (B,T,C), accumulates
        for l in reversed(range(L)):
            residual = a["encoded"] if l == 0 else a["residual3"][l - 1]
            # forward: residual3 = residual2 + fcproj; the projection's dout is dres, and dres stays
            fch_gelu = self._fch_gelu(l)
            if self.recompute >= 1:                                 # forward kept only fch: redo GELU
                ops.gelu_forward(fch_gelu, a["fch"][l])
            # dfch = (dres @ fcprojw) * gelu'(fch): the gradient goes through GELU inside the product's call
            ops.matmul_backward(d["dfch"], g["fcprojw"][l], None, dres, fch_gelu, p["fcprojw"][l], a["fch"][l])
            ln2 = self._recompute_ln(2, l, a["residual2"][l])
            ops.matmul_backward(d["dln"], g["fcw"][l], g["fcb"][l], d["dfch"], ln2, p["fcw"][l])
            ops.layernorm_backward(dres, g["ln2w"][l], g["ln2b"][l], d["dln"], a["residual2"][l], p["ln2w"][l], a["ln2_mean"][l], a["ln2_rstd"][l],
                                   dproj_bias=g["attprojb"][l])
            # forward: residual2 = residual + attproj; likewise
            ops.matmul_backward(d["datty"], g["attprojw"][l], None, dres, a["atty"][l], p["attprojw"][l])
            # the qkv bias gradient is dqkv's rows summed, which attention_backward does as it writes dqkv
            ops.attention_backward(d["dqkv"], d["datty"], a["qkv"][l], a["atty"][l], a["att_lse"][l],
                                   dqkv_bias=g["qkvb"][l])
            ln1 = self._recompute_ln(1, l, residual)
            ops.matmul_backward(d["dln"], g["qkvw"][l], None, d["dqkv"], ln1, p["qkvw"][l])
            ops.layernorm_backward(dres, g["ln1w"][l], g["ln1b"][l], d["dln"], residual, p["ln1w"][l], a["ln1_mean"][l], a["ln1_rstd"][l],
                                   dproj_bias=g["fcprojb"][l - 1] if l > 0 else None)
        ops.encoder_backward(g["wte"], g["wpe"], dres, self.x)

    # ------------------------------------------------------------------------------ update
    def grad_norm(self):
        """Global L2 norm of the gradients (a Python float)."""
        return math.sqrt(float(self.ops.global_norm_squared(self.grads_memory)))

    def shard_grad_squares(self):
        """The sum of squares of this process's shard of the gradients (ZeRO-1 adds them over processes)."""
        start, end = self.shard
        return float(self.ops.global_norm_squared(self.grads_memory[start:end]))

    def update(self, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0):
        """One AdamW step (t = 1, 2, ...), weight decay on the 2-D tensors only. grad_scale multiplies the
        gradients first (clipping: min(1, max_norm / norm)). Updates the slice set_shard() gave this
        process (all of the flat buffer by default), with AdamW state of that size."""
        start, end = self.shard
        self._allocate_optimizer_state()
        offset = 0
        for name, shape in self.param_specs:
            n = int(np.prod(shape))
            lo, hi = max(offset, start), min(offset + n, end)            # this tensor's part of the shard
            if lo < hi:
                s, sm = slice(lo, hi), slice(lo - start, hi - start)
                wd = weight_decay if name in DECAYED_PARAMETERS else 0.0
                master = None if self.master_memory is None else self.master_memory[s]
                self.ops.adamw_update(self.params_memory[s], self.grads_memory[s], self.m_memory[sm],
                                      self.v_memory[sm], lr, beta1, beta2, eps, wd, t, grad_scale, master=master,
                                      seed=rounding_seed(t, name), offset=lo)
            offset += n

    def optimizer_state_to_host(self):
        """(m, v, master) as float32 NumPy arrays for a checkpoint; master is None where the parameters
        themselves are the fp32 master copy."""
        if self.m_memory is None:
            raise RuntimeError("no optimizer state yet: update() has not run")
        start, end = self.shard
        master = None if self.master_memory is None else self.master_memory[start:end]   # this shard's
        f32 = lambda a: None if a is None else self.to_host(a).astype(np.float32)   # noqa: E731
        return f32(self.m_memory), f32(self.v_memory), f32(master)

    def load_optimizer_state(self, m, v, master=None):
        """m, v (and master, for bf16 parameters) of this process's shard (set_shard; the whole buffer by
        default)."""
        start, end = self.shard
        if len(m) != end - start:
            raise ValueError(f"optimizer state for {len(m):,} parameters, this shard has {end - start:,}")
        self.m_memory = self.xp.asarray(np.asarray(m, dtype=self.state_dtype))
        self.v_memory = self.xp.asarray(np.asarray(v, dtype=self.state_dtype))
        if master is not None and self.master_memory is not None:
            self.master_memory[start:end] = self.xp.asarray(np.asarray(master, dtype=self.state_dtype))
            self.params_memory[start:end] = self.xp.asarray(np.asarray(master).astype(self.dtype))

    def flops_per_token(self, T):
        """llm.c's count for one forward+backward at sequence length T (the run's -t): 6 N + 6 L C T."""
        c = self.config
        return 6 * self.num_parameters + 6 * c.num_layers * c.channels * T


def rounding_seed(t, name):
    """The stochastic-rounding seed of step t's update of one tensor: a function of both alone, so a
    resumed run rounds exactly as the uninterrupted one did."""
    return (t * 0x9E3779B1 + PARAMETER_NAMES.index(name) * 0x85EBCA77) & 0xFFFFFFFF


def _split_statistics(specs):
    """(activations, statistics) of an activation table: statistics (params.STATISTICS) are stored in
    float32 even when activations are bf16; on the CPU both tables have one dtype."""
    return [s for s in specs if s[0] not in STATISTICS], [s for s in specs if s[0] in STATISTICS]
