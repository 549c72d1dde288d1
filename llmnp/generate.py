"""Text out: sample from a trained GPT-2, one token at a time, with a key/value cache.

    python -m llmnp.generate --model out/ --prompt "Once upon a time" -n 200
    python -m llmnp.generate --model gpt2_124M.bin --temperature 0      # greedy
    python -m llmnp.generate --model hf_gpt2/ --device cuda --top-k 40 --top-p 0.95 --seed 1

MODEL is an llm.c model file (.bin), Hugging Face GPT-2 weights (a folder or a model.safetensors), or a
train_gpt2.py output folder (its latest complete checkpoint: the highest step with a DONE_ file).

The KV cache: a full forward pass over t tokens does t positions of work in every layer, yet the next
token needs only the new position's query, key and value plus the keys and values of the earlier
positions, and those never change once computed (attention is causal). So each layer keeps its keys and
values, kv (L, 2, NH, maxT, hs), and a new token runs the model on one position: the same layernorm /
matmul / GELU / residual functions as model.forward (model.ops, on (1,1,C) buffers) and, in place of
attention_forward, attention_step below: one query over the cache. Its logits equal the full forward's
last row (tests/test_generate.py checks both, token for token).

Prompts start with EOT (50256), as every document in llm.c's training data does, so a prompt reads as
the start of a document; an empty prompt is EOT alone, where llm.c starts its samples.
Not here: several prompts at once, beam search, chat formats.

Dimension letters: L layers, NH heads, hs = C/NH, C channels, V vocab, Vp padded vocab, maxT positions.
"""
import argparse
import glob
import math
import os
import sys

import numpy as np

from llmnp.errors import UserError, run_cli

# ------------------------------------------------------------------------------------ loading


def read_weights(path):
    """(GPT2Config, flat float32 parameters) from any model path this module accepts (see the top)."""
    from llmnp import checkpoint
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder (give an llm.c .bin, a Hugging Face GPT-2 "
                        f"folder or model.safetensors, or a train_gpt2.py output folder)")
    if os.path.isdir(path):
        latest = checkpoint.latest_checkpoint(path)
        if latest is not None:
            return checkpoint.load_model(latest[1])
        if os.path.exists(os.path.join(path, "model.safetensors")):
            return checkpoint.load_hf(path)
        if glob.glob(os.path.join(path, "model_*.bin")):
            raise UserError(f"{path}: holds model_*.bin files but no DONE_* marker, so no checkpoint "
                            f"there finished writing (name one .bin file to use it anyway)")
        raise UserError(f"{path}: the folder holds neither a training checkpoint (model_*.bin with "
                        f"DONE_*) nor a model.safetensors")
    if path.endswith(".safetensors"):
        return checkpoint.load_hf(path)
    return checkpoint.load_model(path)


def load(path, device="cpu"):
    """A GPT2 on `device` from any model path this module accepts."""
    from llmnp.model import GPT2
    config, flat = read_weights(path)
    model = GPT2(config, device=device, init=False)
    model.load_parameters(flat)
    return model


def pick_device(name):
    """"cpu", "cuda", or "auto": cuda when CuPy sees a GPU, else cpu."""
    if name != "auto":
        return name
    try:
        import cupy
        return "cuda" if cupy.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def to_host(a):
    """A device array as a float64 NumPy array (CuPy arrays have .get(), NumPy arrays do not). The cast
    happens first, on the device: bf16 never has to cross."""
    a = a.astype(np.float64)
    return a.get() if hasattr(a, "get") else a


# -------------------------------------------------------------------------------- the KV cache


class KVCache:
    """Keys and values of every position so far, kv (L, 2, NH, maxT, hs), pos of them filled; and the
    one-position buffers a step writes, in the model's dtypes on its device. The cache itself is float32
    (float64 for a float64 model): the attention of one query is computed at that precision."""

    def __init__(self, model):
        cfg, xp, dt = model.config, model.xp, model.dtype
        L, NH, C, maxT, Vp = cfg.num_layers, cfg.num_heads, cfg.channels, cfg.max_seq_len, cfg.padded_vocab_size
        cache_dt = np.float64 if dt == np.float64 else np.float32
        self.kv = xp.zeros((L, 2, NH, maxT, C // NH), cache_dt)   # (L,2,NH,maxT,hs): keys, values
        self.pos = 0
        self.x = xp.zeros((1, 1, C), dt)           # the residual stream of the new position
        self.ln = xp.zeros((1, 1, C), dt)          # ln1, ln2 or lnf output
        stats_dt = getattr(model, "state_dtype", dt)   # layernorm statistics: float32 for a bf16 model
        self.mean = xp.zeros((1, 1), stats_dt)
        self.rstd = xp.zeros((1, 1), stats_dt)
        self.qkv = xp.zeros((1, 1, 3 * C), dt)
        self.atty = xp.zeros((1, 1, C), dt)
        self.proj = xp.zeros((1, 1, C), dt)        # attproj or fcproj output, added to x
        self.fch = xp.zeros((1, 1, 4 * C), dt)
        self.fch_gelu = xp.zeros((1, 1, 4 * C), dt)
        self.logits = xp.zeros((1, 1, Vp), dt)


def attention_step(out, q, k, v, xp):
    """One query over the cache: out (NH,hs) <- q (NH,hs), k and v (NH,t,hs), the keys and values of
    positions 0..t-1 with the query's own position last. No mask is needed: every cached position is
    this one or an earlier one. This is the last row of attention_forward's softmax(q k^T / sqrt(hs)) v."""
    hs = q.shape[-1]
    q = q.astype(k.dtype, copy=False)
    scores = (k @ q[:, :, None])[:, :, 0]                  # (NH,t,hs) @ (NH,hs,1) -> (NH,t)
    scores *= 1.0 / math.sqrt(hs)
    att = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    out[...] = (att[:, None, :] @ v)[:, 0, :]              # (NH,1,t) @ (NH,t,hs) -> (NH,hs)


def forward_step(model, cache, token):
    """Runs `token` at position cache.pos, appends its keys and values to the cache, and returns the
    logits (Vp,) for the token after it, a view into cache.logits. model.forward's layer sequence, for
    one position."""
    cfg, p, ops, xp, c = model.config, model.params, model.ops, model.xp, cache
    t = c.pos
    if t >= cfg.max_seq_len:
        raise ValueError(f"the KV cache is full: the model holds {cfg.max_seq_len} positions")
    NH, hs = cfg.num_heads, cfg.channels // cfg.num_heads
    x = c.x
    x[0, 0] = p["wte"][token] + p["wpe"][t]                               # encoder_forward, one position
    for l in range(cfg.num_layers):
        ops.layernorm_forward(c.ln, c.mean, c.rstd, x, p["ln1w"][l], p["ln1b"][l])
        ops.matmul_forward(c.qkv, c.ln, p["qkvw"][l], p["qkvb"][l])         # (1,1,3C)
        qkv = c.qkv.reshape(3, NH, hs)                                      # Q | K | V blocks of C
        c.kv[l, :, :, t] = qkv[1:]
        attention_step(c.atty.reshape(NH, hs), qkv[0], c.kv[l, 0, :, :t + 1], c.kv[l, 1, :, :t + 1], xp)
        ops.matmul_forward(c.proj, c.atty, p["attprojw"][l], p["attprojb"][l])
        ops.residual_forward(x, x, c.proj)                                  # x += attproj
        ops.layernorm_forward(c.ln, c.mean, c.rstd, x, p["ln2w"][l], p["ln2b"][l])
        ops.matmul_forward(c.fch, c.ln, p["fcw"][l], p["fcb"][l])           # (1,1,4C)
        ops.gelu_forward(c.fch_gelu, c.fch)
        ops.matmul_forward(c.proj, c.fch_gelu, p["fcprojw"][l], p["fcprojb"][l])
        ops.residual_forward(x, x, c.proj)                                  # x += fcproj
    ops.layernorm_forward(c.ln, c.mean, c.rstd, x, p["lnfw"], p["lnfb"])
    ops.matmul_forward(c.logits, c.ln, p["wte"], None)                      # (1,1,Vp), tied wte
    c.pos += 1
    return c.logits[0, 0]


# ----------------------------------------------------------------------------------- sampling


def sample(logits, temperature, top_k, top_p, rng):
    """A token id from logits (V,) (a host array): greedy at temperature 0, else softmax(logits /
    temperature) restricted to the top_k most likely tokens (0 = all), then to the smallest set of
    them whose probability reaches top_p (1 = all), renormalized."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    ids = np.arange(z.size)                              # the candidates' token ids
    if 0 < top_k < z.size:
        ids = np.argpartition(z, -top_k)[-top_k:]        # the k most likely, in no particular order
        z = z[ids]
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely candidates
        probs[order[before >= top_p]] = 0.0              # keeps the one that crosses top_p
    cdf = np.cumsum(probs)
    i = np.searchsorted(cdf, rng.random() * cdf[-1], side="right")
    return int(ids[min(i, z.size - 1)])


def generate(model, tokens, max_new_tokens, temperature=0.8, top_k=40, top_p=0.95, seed=0, eot=50256):
    """Yields up to max_new_tokens new token ids after the prompt `tokens` (a non-empty list of ids). It
    stops after yielding `eot`, and when the model's max_seq_len positions are full (a caller that got
    fewer tokens than it asked for and no eot knows that is why)."""
    cfg = model.config
    if not tokens:
        raise UserError("the prompt is empty: give at least one token (EOT starts a new document)")
    if len(tokens) > cfg.max_seq_len:
        raise UserError(f"the prompt is {len(tokens)} tokens, the model reads at most {cfg.max_seq_len} positions")
    rng = np.random.default_rng(seed)
    cache = KVCache(model)
    for token in tokens[:-1]:                 # the prompt fills the cache, one position at a time
        forward_step(model, cache, token)
    token = tokens[-1]
    for _ in range(max_new_tokens):
        logits = forward_step(model, cache, token)
        token = sample(to_host(logits[:cfg.vocab_size]), temperature, top_k, top_p, rng)
        yield token
        if token == eot or cache.pos == cfg.max_seq_len:   # no position left to run `token` at
            return


# ---------------------------------------------------------------------------------------- CLI


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m llmnp.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="llm.c .bin, HF GPT-2 folder/.safetensors, or training output folder")
    ap.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=200, help="tokens to generate [200]")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy [0.8]")
    ap.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens; 0 = all [40]")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus: the smallest set with this much probability; 1 = all [0.95]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    if args.max_new_tokens < 0:
        raise UserError(f"-n must be >= 0, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")

    from llmnp import tokenizer
    model = load(args.model, device=pick_device(args.device))
    V = model.config.vocab_size
    tokens = [tokenizer.EOT] + tokenizer.encode(args.prompt)
    if max(tokens) >= V:
        raise UserError(f"the model's vocabulary has {V} tokens but the GPT-2 tokenizer needs "
                        f"{tokenizer.EOT + 1} (EOT is {tokenizer.EOT}): this model was not trained on GPT-2 tokens")

    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    decoder = tokenizer.StreamDecoder()
    n = 0
    token = None
    for token in generate(model, tokens, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                          args.seed, eot=tokenizer.EOT):
        n += 1
        if token == tokenizer.EOT:
            break
        out.write(decoder.feed(token))       # tokens appear as they are produced
        out.flush()
    out.write(decoder.flush() + "\n")
    out.flush()
    if n < args.max_new_tokens and token != tokenizer.EOT:
        print(f"[stopped after {n} tokens: the model reads at most {model.config.max_seq_len} positions]",
              file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
