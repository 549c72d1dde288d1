"""Text out: sample from a trained GPT-2 with a key/value cache, one prompt streamed or many at once.

    python -m llmnp.generate --model out/ --prompt "Once upon a time" -n 200
    python -m llmnp.generate --model gpt2_124M.bin --temperature 0      # greedy
    python -m llmnp.generate --model hf_gpt2/ --device cuda --top-k 40 --top-p 0.95 --seed 1
    python -m llmnp.generate --model out/ --device cuda --num-samples 64 -n 100

    from llmnp import GPT2
    from llmnp.generate import generate_many
    new = generate_many(GPT2.load("out/", device="cuda"), [[50256, 464], [50256, 40, 716, 257]], 50)

MODEL is an llm.c model file (.bin), Hugging Face GPT-2 weights (a folder or a model.safetensors), or a
train_gpt2.py output folder (its latest complete checkpoint: the highest step with a DONE_ file).

The KV cache: a full forward pass over t tokens does t positions of work in every layer, yet the next
token needs only the new position's query, key and value plus the keys and values of the earlier
positions, and those never change once computed (attention is causal). So each layer keeps its keys and
values, kv (L, 2, B, NH, Tc, hs), and a step runs the model on one position per row: the same layernorm /
matmul / GELU / residual functions as model.forward (model.ops, on (B,1,C) buffers) and, in place of the
encoder, attention and the loss, encoder_step / attention_step / sample_step below (llmnp/cuda/decode.cu
on the GPU). Every row has its own position, so prompts of different lengths decode together: a row
reads its prompt one position per step, then samples. Its logits equal the full forward's at every
position (tests/test_generate.py checks both devices, and greedy generation token for token). On the
GPU one step is captured once as a CUDA graph and replayed: a token costs one launch, not hundreds.

Prompts start with EOT (50256), as every document in llm.c's training data does, so a prompt reads as
the start of a document; an empty prompt is EOT alone, where llm.c starts its samples. Each sample draws
from its own seed stream: sample b's uniform number at position t is a hash of (seed, b, t), the same
on either device and in any batch.
Not here: beam search, chat formats, prefilling a prompt in one pass (a prompt costs one step a token).

Dimension letters: B rows (samples), L layers, NH heads, hs = C/NH, C channels, V vocab, Vp padded vocab,
maxT positions, Tc cache positions (<= maxT).
"""
import math
import sys
import time

import numpy as np

from llmnp import cli
from llmnp.errors import UserError, run_cli
from llmnp.layers import matmul_forward  # noqa: F401  the decode step's products on the CPU: the model's own

# ------------------------------------------------------------------------------- seed streams
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's finalizer: a 64-bit integer hashed to another (decode.cu's mix64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(seed, sample):
    """The 64-bit key of sample `sample`'s seed stream: every sample of a batch draws its own numbers."""
    return mix64((mix64((seed + GOLDEN) & MASK64) + sample) & MASK64)


def uniform(key, position):
    """The uniform number in [0, 1) a stream draws for the token at `position`: a hash of the two, so a
    sample's draws depend on its seed and position only, not on its batch or device."""
    return (mix64((key + position * GOLDEN) & MASK64) >> 11) / float(1 << 53)


# ------------------------------------------------------------------ one position per row: NumPy
# The three steps of decoding that the full forward pass lacks, in NumPy; llmnp/cuda/decode.py has the
# same names and arguments. Each row b runs token tok[b] at its own position pos[b], so prompts of
# different lengths decode together. Shapes: B rows, Tc cache positions, kv (2,B,NH,Tc,hs) one layer's
# keys | values, x (B,1,C), qkv (B,1,3C), logits (B,1,Vp), tok/pos/done/out int32 (B,), prompt (B,Tc).


def encoder_step(x, tok, pos, wte, wpe):
    """x (B,1,C) = wte[tok] + wpe[pos], row by row: encoder_forward at each row's own position."""
    x[:, 0] = wte[tok] + wpe[pos]


def attention_step(out, kv, qkv, pos):
    """Writes each row's new key and value into kv at pos[b], then out (B,1,C) <- its query over positions
    0..pos[b]: the last row of attention_forward's softmax(q k^T / sqrt(hs)) v (every cached position is
    this one or an earlier one, so no mask)."""
    _, B, NH, Tc, hs = kv.shape
    for b in range(B):
        t = int(pos[b])
        q, k, v = qkv[b, 0].reshape(3, NH, hs)                 # Q | K | V blocks of C
        kv[0, b, :, t] = k
        kv[1, b, :, t] = v
        q = q.astype(kv.dtype, copy=False)
        scores = (kv[0, b, :, :t + 1] @ q[:, :, None])[:, :, 0] / math.sqrt(hs)   # (NH,t+1)
        att = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        out[b, 0] = (att[:, None, :] @ kv[1, b, :, :t + 1])[:, 0, :].reshape(-1)  # (NH,1,t+1) @ (NH,t+1,hs)


def sample_step(out, tok, pos, done, logits, prompt, prompt_len, key, V, temperature, top_k, top_p, eot):
    """Per row: a row still inside its prompt takes the prompt's next token (out -1); a done row stays
    (out -1); any other samples out[b] from logits (B,1,Vp) with the uniform number of its stream at
    the next position, and runs it next, unless it is eot or the cache (Tc positions) is full: done."""
    Tc = prompt.shape[1]
    for b in range(len(out)):
        out[b] = -1
        nxt = int(pos[b]) + 1
        if done[b]:
            continue
        if nxt < prompt_len[b]:
            tok[b], pos[b] = prompt[b, nxt], nxt
            continue
        s = sample(logits[b, 0, :V], temperature, top_k, top_p, uniform(int(key[b]), nxt))
        out[b] = s
        if s == eot or nxt >= Tc:
            done[b] = 1
        else:
            tok[b], pos[b] = s, nxt


def decode_backend(device):
    """The three decode steps of a device (and the step's matmul_forward): this module's NumPy ones,
    or llmnp.cuda.decode's kernels."""
    if device == "cuda":
        from llmnp.cuda import decode
        return decode
    return sys.modules[__name__]


# ----------------------------------------------------------------------------------- sampling


def sample(logits, temperature, top_k, top_p, u):
    """A token id from logits (V,) (a host array) and a uniform number u in [0, 1): greedy at
    temperature 0, else softmax(logits / temperature) restricted to the top_k most likely tokens
    (0 = all), then to the smallest set of them whose probability reaches top_p (1 = all),
    renormalized; the token where the cumulative probability, in token order, first passes u."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    ids = np.arange(z.size)                              # the candidates' token ids
    if 0 < top_k < z.size:
        ids = np.sort(np.argpartition(z, -top_k)[-top_k:])   # the k most likely, in token order
        z = z[ids]
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely candidates
        probs[order[before >= top_p]] = 0.0              # keeps the one that crosses top_p
    cdf = np.cumsum(probs)
    i = np.searchsorted(cdf, u * cdf[-1], side="right")
    return int(ids[min(i, z.size - 1)])


# ---------------------------------------------------------------------------- the decoder


class Decoder:
    """B prompts decoded together with a key/value cache, one position per row per step().

    kv (L, 2, B, NH, Tc, hs) holds every layer's keys and values; Tc = the longest prompt plus
    max_new_tokens, at most the model's max_seq_len. A step runs model.forward's layer sequence (the
    same functions of model.ops, on (B,1,C) buffers) with encoder_step, attention_step and
    sample_step in place of the encoder, attention and the loss. On the GPU every launch of a step
    reads its changing sizes from device memory, so the second step is captured as a CUDA graph and
    every later step replays it: one launch per token instead of ~10 per layer.
    The cache is in the model's storage dtype on the GPU (bf16 as the full forward's qkv), float32
    (float64 for a float64 model) on the CPU."""

    def __init__(self, model, prompts, max_new_tokens, temperature=0.8, top_k=40, top_p=0.95, seed=0,
                 eot=50256, graph=True):
        cfg, xp = model.config, model.xp
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("a prompt is empty: give at least one token (EOT starts a new document)")
        longest = max(map(len, prompts))
        if longest > cfg.max_seq_len:
            raise UserError(f"the prompt is {longest} tokens, the model reads at most {cfg.max_seq_len} positions")
        B, L, NH, C, Vp = len(prompts), cfg.num_layers, cfg.num_heads, cfg.channels, cfg.padded_vocab_size
        self.model, self.B = model, B
        self.Tc = Tc = min(cfg.max_seq_len, longest + max(max_new_tokens, 1))
        self.settings = (cfg.vocab_size, float(temperature), int(top_k), float(top_p), int(eot))
        dt = model.dtype
        cache_dt = dt if model.device == "cuda" else (np.float64 if dt == np.float64 else np.float32)
        self.kv = xp.zeros((L, 2, B, NH, Tc, C // NH), cache_dt)   # (L,2,B,NH,Tc,hs)
        self.x = xp.zeros((B, 1, C), dt)              # the residual stream
        self.res = xp.zeros((B, 1, C), dt)            # the residual stream after attention
        self.ln = xp.zeros((B, 1, C), dt)             # ln1, ln2 or lnf output
        stats_dt = getattr(model, "state_dtype", dt)  # layernorm statistics: float32 for a bf16 model
        self.mean = xp.zeros((B, 1), stats_dt)
        self.rstd = xp.zeros((B, 1), stats_dt)
        self.qkv = xp.zeros((B, 1, 3 * C), dt)
        self.atty = xp.zeros((B, 1, C), dt)
        self.fch = xp.zeros((B, 1, 4 * C), dt)
        self.fch_gelu = xp.zeros((B, 1, 4 * C), dt)
        self.logits = xp.zeros((B, 1, Vp), dt)
        prompt = np.zeros((B, Tc), np.int32)
        for b, p in enumerate(prompts):
            prompt[b, :len(p)] = p
        self.prompt = xp.asarray(prompt)
        self.prompt_len = xp.asarray(np.array([len(p) for p in prompts], np.int32))
        self.tok = xp.asarray(prompt[:, 0].copy())
        self.pos = xp.zeros(B, np.int32)
        self.done = xp.zeros(B, np.int32)
        self.out = xp.full(B, -1, np.int32)
        self.key = xp.asarray(np.array([stream_key(seed, b) for b in range(B)], np.uint64))
        self.dec = decode_backend(model.device)
        self.use_graph = graph and model.device == "cuda"
        self.graph = None
        self.steps = 0

    def _launch(self):
        """One step's launches: model.forward's layer sequence for one position per row."""
        m, p, ops, dec = self.model, self.model.params, self.model.ops, self.dec
        x, res, ln, mean, rstd = self.x, self.res, self.ln, self.mean, self.rstd
        L = m.config.num_layers
        dec.encoder_step(x, self.tok, self.pos, p["wte"], p["wpe"])
        ops.layernorm_forward(ln, mean, rstd, x, p["ln1w"][0], p["ln1b"][0])
        for l in range(L):
            dec.matmul_forward(self.qkv, ln, p["qkvw"][l], p["qkvb"][l])                  # (B,1,3C)
            dec.attention_step(self.atty, self.kv[l], self.qkv, self.pos)
            dec.matmul_forward(res, self.atty, p["attprojw"][l], None)
            # res = x + attproj + attprojb, then ln = layernorm(res)
            ops.residual_layernorm_forward(res, ln, mean, rstd, x, res, p["attprojb"][l], p["ln2w"][l], p["ln2b"][l])
            dec.matmul_forward(self.fch, ln, p["fcw"][l], p["fcb"][l])                    # (B,1,4C)
            ops.gelu_forward(self.fch_gelu, self.fch)
            dec.matmul_forward(x, self.fch_gelu, p["fcprojw"][l], None)
            # x = res + fcproj + fcprojb, then the next layernorm: layer l+1's ln1, or lnf
            w, b = (p["ln1w"][l + 1], p["ln1b"][l + 1]) if l + 1 < L else (p["lnfw"], p["lnfb"])
            ops.residual_layernorm_forward(x, ln, mean, rstd, res, x, p["fcprojb"][l], w, b)
        dec.matmul_forward(self.logits, ln, p["wte"], None)                               # (B,1,Vp), tied wte
        dec.sample_step(self.out, self.tok, self.pos, self.done, self.logits, self.prompt, self.prompt_len,
                        self.key, *self.settings)

    def step(self):
        """Runs one position of every row; returns the tokens sampled (B,) as a host int array, -1 for
        the rows that sampled nothing (still in their prompt, or done)."""
        self.steps += 1
        if not self.use_graph:
            self._launch()
            return np.array(self.model.to_host(self.out))
        if self.graph is None:
            stream = self.stream = getattr(self, "stream", None) or self.model.xp.cuda.Stream()
            with stream:                                # a graph is captured from a stream of its own
                if self.steps == 1:                     # the first step runs as it is: kernels compile,
                    self._launch()                      # cuBLAS picks its algorithms
                else:
                    try:
                        self.graph = self._capture(stream)
                    except Exception as e:              # decoding still works, one launch at a time
                        self.use_graph = False
                        print(f"[decoding without a CUDA graph: capturing the step failed "
                              f"({type(e).__name__}: {e})]", file=sys.stderr)
                        self._launch()
                    else:
                        self.graph.launch(stream)
        else:
            self.graph.launch(self.stream)
        return self.out.get(stream=self.stream)

    def _capture(self, stream):
        """The step's launches as a CUDA graph (recorded, not run)."""
        stream.begin_capture()
        try:
            self._launch()
        finally:
            graph = stream.end_capture()
        return graph

    @property
    def cache_full(self):
        """True when the rows' cache holds the model's whole context (Tc == max_seq_len)."""
        return self.Tc == self.model.config.max_seq_len


def generate_many(model, prompts, max_new_tokens, temperature=0.8, top_k=40, top_p=0.95, seed=0, eot=50256,
                  graph=True):
    """The new tokens of each prompt (a list of lists of ids, of any lengths), decoded together: up to
    max_new_tokens each, a list that ends at eot if the sample produced it, or early when the model's
    max_seq_len positions are full. Sample b draws from its own seed stream (stream_key(seed, b)), so
    it is the same sample whether decoded alone (generate) or in a batch."""
    dec = Decoder(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, eot, graph)
    new = [[] for _ in prompts]
    live = np.ones(len(prompts), bool)                     # rows that still want tokens
    while live.any() and max_new_tokens > 0:
        out = dec.step()
        for b in np.flatnonzero(live & (out >= 0)):
            new[b].append(int(out[b]))
            if out[b] == eot or len(new[b]) == max_new_tokens or len(prompts[b]) + len(new[b]) > dec.Tc:
                live[b] = False
    return new


def generate(model, tokens, max_new_tokens, temperature=0.8, top_k=40, top_p=0.95, seed=0, eot=50256, graph=True):
    """Yields up to max_new_tokens new token ids after the prompt `tokens` (a non-empty list of ids), as
    they are sampled. It stops after yielding `eot`, and when the model's max_seq_len positions are
    full (a caller that got fewer tokens than it asked for and no eot knows that is why). The same
    tokens as generate_many's first sample."""
    if max_new_tokens <= 0:
        if not tokens:
            raise UserError("the prompt is empty: give at least one token (EOT starts a new document)")
        return
    dec = Decoder(model, [tokens], max_new_tokens, temperature, top_k, top_p, seed, eot, graph)
    n = 0
    while True:
        s = int(dec.step()[0])
        if s < 0:
            continue                                       # still reading the prompt
        yield s
        n += 1
        if s == eot or n == max_new_tokens or len(tokens) + n > dec.Tc:   # no position left to run s at
            return


# ---------------------------------------------------------------------------------------- CLI


def main(argv=None):
    ap = cli.ArgumentParser("python -m llmnp.generate", __doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="llm.c .bin, HF GPT-2 folder/.safetensors, or training output folder")
    ap.add_argument("--prompt", default="", help="text to continue [start a new document]")
    ap.add_argument("-n", "--max-new-tokens", type=cli.count, default=200, help="tokens to generate")
    ap.add_argument("--num-samples", type=cli.positive_int, default=1,
                    help="samples of the prompt, decoded together, each its own seed stream")
    ap.add_argument("--temperature", type=cli.finite_nonneg, default=0.8, help="0 = greedy")
    ap.add_argument("--top-k", type=cli.count, default=40, help="sample among the k most likely tokens; 0 = all")
    ap.add_argument("--top-p", type=cli.open_fraction, default=0.95,
                    help="nucleus: the smallest set with this much probability; 1 = all")
    ap.add_argument("--seed", type=cli.seed_int, default=0, help="seed of the samples' random streams")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU when there is one")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on the GPU, fp32 on the CPU")
    args = ap.parse_args(argv)

    from llmnp import tokenizer
    from llmnp.model import GPT2, pick_device
    device = pick_device(args.device)
    dtype = {"auto": "bfloat16" if device == "cuda" else "float32", "fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    if dtype == "bfloat16" and device != "cuda":
        raise UserError("--dtype bf16 runs on the GPU only (--device cuda); the CPU computes in fp32")
    model = GPT2.load(args.model, device=device, dtype=dtype)
    print(f"[model: {model.source}]", file=sys.stderr)
    V = model.config.vocab_size
    tokens = [tokenizer.EOT] + tokenizer.encode(args.prompt)
    if max(tokens) >= V:
        raise UserError(f"the model's vocabulary has {V} tokens but the GPT-2 tokenizer needs "
                        f"{tokenizer.EOT + 1} (EOT is {tokenizer.EOT}): this model was not trained on GPT-2 tokens")
    knobs = (args.temperature, args.top_k, args.top_p, args.seed)

    out = sys.stdout
    t0 = time.perf_counter()
    if args.num_samples == 1:
        out.write(args.prompt)
        out.flush()
        decoder = tokenizer.StreamDecoder()
        samples = [[]]
        for token in generate(model, tokens, args.max_new_tokens, *knobs, eot=tokenizer.EOT):
            samples[0].append(token)
            if token != tokenizer.EOT:
                out.write(decoder.feed(token))       # tokens appear as they are produced
                out.flush()
        out.write(decoder.flush() + "\n")
    else:
        samples = generate_many(model, [tokens] * args.num_samples, args.max_new_tokens, *knobs, eot=tokenizer.EOT)
        for new in samples:
            out.write("---\n" + args.prompt + tokenizer.decode([t for t in new if t != tokenizer.EOT]) + "\n")
        out.write("---\n")
    out.flush()
    seconds = time.perf_counter() - t0
    n = sum(map(len, samples))
    print(f"[{args.num_samples} sample{'s' * (args.num_samples > 1)}, {n} tokens in {seconds:.2f} s: "
          f"{n / seconds:,.1f} tokens/s, {device} {dtype}]", file=sys.stderr)
    full = [len(s) for s in samples if len(s) < args.max_new_tokens and (not s or s[-1] != tokenizer.EOT)]
    if full:
        print(f"[stopped after {full[0]} tokens: the model reads at most {model.config.max_seq_len} positions]",
              file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
