"""The tables every buffer is made from: GPT-2's 16 parameter tensors in llm.c's order, and the
activations one forward pass saves for the backward pass.

One table -> one flat buffer -> named views. The parameter table makes the parameters, the gradients,
AdamW's m and v, and the checkpoint layout; they all agree because they all come from here.
This file allocates; it computes nothing.

Dimension letters: L layers, C channels, NH heads, maxT positions, Vp padded vocab, B batch, T time.
"""
import numpy as np

PARAMETER_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                   "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")

# the tensors that get weight decay: the 2-D (and layer-stacked 2-D) matrices, as llm.c's GPU trainer
DECAYED_PARAMETERS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def parameter_specs(config):
    """[(name, shape)] of the 16 parameter tensors, llm.c's order; weights are (out, in)."""
    Vp, maxT, L, C = config.padded_vocab_size, config.max_seq_len, config.num_layers, config.channels
    shapes = [
        (Vp, C),          # wte: token embedding, also the (tied) output projection
        (maxT, C),        # wpe: position embedding
        (L, C),           # ln1w
        (L, C),           # ln1b
        (L, 3 * C, C),    # qkvw: rows are Q | K | V, head h in columns h*hs..(h+1)*hs of each
        (L, 3 * C),       # qkvb
        (L, C, C),        # attprojw
        (L, C),           # attprojb
        (L, C),           # ln2w
        (L, C),           # ln2b
        (L, 4 * C, C),    # fcw
        (L, 4 * C),       # fcb
        (L, C, 4 * C),    # fcprojw
        (L, C),           # fcprojb
        (C,),             # lnfw
        (C,),             # lnfb
    ]
    return list(zip(PARAMETER_NAMES, shapes))


# rows of logits the classifier holds at once (model.forward_backward and validate walk B*T in blocks
# of these): 0.8 GiB of bf16 logits at GPT-2's Vp, and its products as fast as over all of d12's
# 65,536 rows at once (dev/cuda/README.md)
CLASSIFIER_ROWS = 8192


def activation_specs(config, B, T, recompute=0, classifier_rows=CLASSIFIER_ROWS):
    """[(name, shape)] of what the forward pass keeps for backward, all L layers stacked.

    recompute >= 1 (llm.c's -r 1): GELU's output is not kept per layer; one layer's buffer is reused
    and backward recomputes it from fch, saving (L-1) * B*T*4C values for one GELU per layer.
    recompute >= 2 (llm.c's -r 2): the layernorm outputs ln1 and ln2 are not kept per layer either;
    backward recomputes each from its input and the kept mean and rstd, saving 2(L-1) * B*T*C values.

    Attention keeps only its output and the softmax log-sum-exp (B, NH, T) per row; the backward
    pass recomputes the (T, T) probabilities from q, k and that statistic (flash-attention style), so
    neither device ever holds an (L, B, NH, T, T) tensor.
    The attention and MLP projections are written straight into the residual buffers and the
    residual (and their bias) added in place: their own outputs are never needed by backward.
    fch is the fc layer's pre-activation, the product with its bias; fch_gelu = gelu(fch).
    The loss is computed from the logits directly, keeping each row's log-sum-exp, from which backward
    recomputes the softmax (llm.c's fused classifier), so no (B, T, Vp) probabilities are kept;
    backward writes dlogits over the logits. The logits buffer holds min(B*T, classifier_rows) rows:
    training's classifier goes over the rows a block at a time (model.forward_backward).
    """
    L, C, NH, Vp = config.num_layers, config.channels, config.num_heads, config.padded_vocab_size
    ln = (B, T, C) if recompute >= 2 else (L, B, T, C)
    return [
        ("encoded", (B, T, C)),          # wte[token] + wpe[position]
        ("ln1", ln),
        ("ln1_mean", (L, B, T)),
        ("ln1_rstd", (L, B, T)),
        ("qkv", (L, B, T, 3 * C)),
        ("atty", (L, B, T, C)),          # attention output, heads concatenated
        ("att_lse", (L, B, NH, T)),      # log-sum-exp of each softmax row
        ("residual2", (L, B, T, C)),     # residual + attproj
        ("ln2", ln),
        ("ln2_mean", (L, B, T)),
        ("ln2_rstd", (L, B, T)),
        ("fch", (L, B, T, 4 * C)),       # fc product with its bias, before GELU
        ("fch_gelu", (B, T, 4 * C) if recompute >= 1 else (L, B, T, 4 * C)),
        ("residual3", (L, B, T, C)),     # residual2 + fcproj
        ("lnf", (B, T, C)),
        ("lnf_mean", (B, T)),
        ("lnf_rstd", (B, T)),
        ("logits", (min(B * T, classifier_rows), Vp)),   # backward overwrites them with dlogits
        ("losses", (B, T)),
        ("logits_lse", (B, T)),          # log-sum-exp of each row of logits[..., :V]
    ]


# the activations that are statistics rather than tensors of the model's dtype: kept in float32 when
# the model stores bf16 (layernorm mean/rstd, attention and logits log-sum-exp, per-position losses)
STATISTICS = ("ln1_mean", "ln1_rstd", "att_lse", "ln2_mean", "ln2_rstd", "lnf_mean", "lnf_rstd", "losses",
              "logits_lse")


def gradient_scratch_specs(config, B, T):
    """[(name, shape)] of the activation gradients backward needs: one layer's worth, reused by every
    layer as backward walks down, plus the residual stream's gradient, which accumulates."""
    C = config.channels
    return [
        ("dresidual", (B, T, C)),        # gradient of the residual stream, accumulates layer to layer
        ("dln", (B, T, C)),              # gradient of a layernorm output (ln1, ln2 or lnf)
        ("datty", (B, T, C)),
        ("dqkv", (B, T, 3 * C)),
        ("dfch", (B, T, 4 * C)),
    ]


def num_elements(specs):
    return sum(int(np.prod(shape)) for _, shape in specs)


def make_views(flat, specs):
    """{name: view} into one flat 1-D buffer, laid out in table order with no gaps."""
    if flat.ndim != 1 or flat.size != num_elements(specs):
        raise ValueError(f"flat buffer has {flat.size} elements, the table needs {num_elements(specs)}")
    views, offset = {}, 0
    for name, shape in specs:
        n = int(np.prod(shape))
        views[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    return views


def allocate(specs, dtype=np.float32, xp=np):
    """One zeroed flat buffer for a table and its named views: (flat, {name: view})."""
    flat = xp.zeros(num_elements(specs), dtype=dtype)
    return flat, make_views(flat, specs)


def num_parameters(config):
    return num_elements(parameter_specs(config))
