"""Generation: the KV-cache step against the full forward pass (logits at every position, one prompt and
several of different lengths, and greedy generation token for token), on the CPU and the GPU (eager and
as a CUDA graph); sampling's knobs and seed streams (the GPU's sampler against the CPU's); the
max_seq_len stop; the CLI on every kind of model path, and with --num-samples. The end-to-end run
(your text -> shards -> training -> generate) is tests/test_text.py."""
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_gpu

from llmnp import GPT2, GPT2Config, tokenizer
from llmnp.errors import UserError
from llmnp.generate import Decoder, generate, generate_many, main, sample, stream_key, uniform
from llmnp.params import PARAMETER_NAMES

def to_host(a):
    """A float64 NumPy copy of a NumPy or CuPy array."""
    return np.array(a.get() if hasattr(a, "get") else a, dtype=np.float64)           # always a copy


TINY = GPT2Config.tiny(vocab_size=40, max_seq_len=24, num_layers=2, num_heads=2, channels=16, pad_to=16)


def perturbed_model(dtype, config=TINY, seed=0):
    """Random O(1) weights, so attention spreads over many positions and logits differ clearly."""
    model = GPT2(config, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name in PARAMETER_NAMES:
        model.params[name][...] += 0.3 * rng.standard_normal(model.params[name].shape)
    model.params["wte"][config.vocab_size:] = 0
    return model


def full_forward_logits(model, tokens):
    """Logits (V,) after the last of `tokens` from one full forward pass. The sequence is padded to
    max_seq_len (causal attention: positions after the last cannot change its logits), so the model
    keeps one (1, maxT) activation buffer whatever the length."""
    x = np.zeros((1, model.config.max_seq_len), np.int32)
    x[0, :len(tokens)] = tokens
    model.forward(x)
    return np.asarray(model.logits[0, len(tokens) - 1, :model.config.vocab_size], dtype=np.float64)


def decoded_logits(model, prompts, max_new_tokens, graph=True, **knobs):
    """Decodes prompts together and returns, per row, {position: logits (V,) the step computed there} and
    the row's sequence (prompt + new tokens)."""
    dec = Decoder(model, prompts, max_new_tokens, graph=graph, **knobs)
    V = model.config.vocab_size
    seen = [dict() for _ in prompts]
    seqs = [list(p) for p in prompts]
    new = [0] * len(prompts)
    while any(n < max_new_tokens and (not n or seqs[b][-1] != knobs.get("eot", 50256))
              for b, n in enumerate(new)):
        pos = to_host(dec.pos).astype(int)
        done = to_host(dec.done)
        out = dec.step()
        logits = to_host(dec.logits[:, 0, :V])
        if graph and model.device == "cuda" and dec.steps >= 2:
            assert dec.graph is not None, "the step was not captured as a CUDA graph"
        for b in range(len(prompts)):
            if not done[b] and new[b] < max_new_tokens:
                seen[b].setdefault(pos[b], logits[b])
            if out[b] >= 0 and new[b] < max_new_tokens:
                seqs[b].append(int(out[b]))
                new[b] += 1
    return seen, seqs


def full_logits(model, seq):
    """The full forward pass's logits (len(seq), V) of one sequence (host float64). The sequence is padded
    to max_seq_len (causal attention: later positions cannot change earlier logits), so the model keeps
    one (1, maxT) activation buffer whatever the length."""
    x = np.zeros((1, model.config.max_seq_len), np.int32)
    x[0, :len(seq)] = seq
    model.forward(x)
    return to_host(model.logits[0, :len(seq), :model.config.vocab_size])


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 1e-5, 1e-5)])
def test_cached_logits_equal_full_forward_at_every_position(dtype, rtol, atol):
    model = perturbed_model(dtype)
    T = TINY.max_seq_len
    tokens = np.random.default_rng(3).integers(0, TINY.vocab_size, T).astype(np.int32)
    full = full_logits(model, tokens.tolist())                          # (T, V)
    seen, _ = decoded_logits(model, [tokens.tolist()], 1, temperature=0, eot=-1)
    assert sorted(seen[0]) == list(range(T))
    for t in range(T):
        np.testing.assert_allclose(seen[0][t], full[t], rtol=rtol, atol=atol, err_msg=f"position {t}")


def test_prompts_of_different_lengths_decode_together_as_each_alone():
    model = perturbed_model(np.float64)
    prompts = [[5, 17, 3], [1], [9, 9, 2, 30, 4, 11, 7], [12, 0]]
    seen, seqs = decoded_logits(model, prompts, 6, temperature=0, eot=-1)
    for b, p in enumerate(prompts):
        full = full_logits(model, seqs[b][:-1])                       # every position that ran
        assert sorted(seen[b]) == list(range(len(seqs[b]) - 1))
        for t, logits in seen[b].items():
            np.testing.assert_allclose(logits, full[t], rtol=1e-12, atol=1e-12, err_msg=f"row {b} position {t}")
        assert seqs[b][len(p):] == list(generate(model, p, 6, temperature=0, eot=-1))
    # sampled: sample b of a batch is the sample of seed stream b, alone or not
    batch = generate_many(model, prompts, 8, temperature=1.0, top_k=0, top_p=1.0, seed=7, eot=-1)
    assert batch[0] == list(generate(model, prompts[0], 8, temperature=1.0, top_k=0, top_p=1.0, seed=7, eot=-1))
    assert [len(n) for n in batch] == [8] * 4
    same = generate_many(model, [prompts[1]] * 3, 8, temperature=1.0, top_k=0, top_p=1.0, seed=7, eot=-1)
    assert same[1] == batch[1] and same[1] != same[0] != same[2]         # stream 1 in both; own streams


def test_seed_streams():
    keys = [stream_key(0, b) for b in range(4)] + [stream_key(1, 0)]
    assert len(set(keys)) == 5
    u = np.array([uniform(keys[0], t) for t in range(20000)])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 1800


def test_greedy_kv_generation_equals_full_forward_generation_token_for_token():
    model = perturbed_model(np.float32)
    prompt = [5, 17, 3]
    cached = list(generate(model, prompt, 15, temperature=0, eot=-1))
    tokens = list(prompt)
    for _ in range(15):
        tokens.append(int(np.argmax(full_forward_logits(model, tokens))))
    assert cached == tokens[len(prompt):]
    assert len(set(cached)) > 3          # a real sequence, not one token repeated


def test_generation_stops_at_max_seq_len_and_after_eot():
    model = perturbed_model(np.float32)
    prompt = [1, 2, 3, 4]
    out = list(generate(model, prompt, 1000, temperature=1.0, top_k=0, top_p=1.0, seed=1, eot=-1))
    # the last position holds the token before the last one produced: maxT - len(prompt) + 1 new tokens
    assert len(out) == TINY.max_seq_len - len(prompt) + 1
    # every prompt position and every produced token but the last ran through the model
    eot = out[5]
    stopped = list(generate(model, prompt, 1000, temperature=1.0, top_k=0, top_p=1.0, seed=1, eot=eot))
    assert stopped == out[:out.index(eot) + 1]
    assert list(generate(model, prompt, 0)) == []


def test_same_seed_same_sample_and_temperature_changes_it():
    model = perturbed_model(np.float32)
    a = list(generate(model, [7], 20, temperature=1.0, top_k=0, top_p=1.0, seed=5, eot=-1))
    b = list(generate(model, [7], 20, temperature=1.0, top_k=0, top_p=1.0, seed=5, eot=-1))
    c = list(generate(model, [7], 20, temperature=1.0, top_k=0, top_p=1.0, seed=6, eot=-1))
    assert a == b and a != c


def test_sample_top_k_top_p_and_temperature():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.0, 0.0, 2.5])
    assert sample(logits, 0, 40, 0.95, rng.random()) == 1                       # greedy
    assert {sample(logits, 1.0, 1, 1.0, rng.random()) for _ in range(50)} == {1}   # top-1 is greedy
    assert {sample(logits, 1.0, 2, 1.0, rng.random()) for _ in range(200)} == {1, 4}
    assert {sample(logits, 1.0, 0, 1e-6, rng.random()) for _ in range(50)} == {1}  # nucleus of one token
    # p = softmax: 0.0236 0.4733(1) 0.1741(2) 0.0087 0.2871(4): 0.47 + 0.29 = 0.76 < 0.8 takes token 2 too
    assert {sample(logits, 1.0, 0, 0.8, rng.random()) for _ in range(300)} == {1, 2, 4}
    counts = np.bincount([sample(logits, 1.0, 0, 1.0, rng.random()) for _ in range(4000)], minlength=5) / 4000
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(counts, p, atol=0.03)
    # a high temperature flattens: token 3 (least likely) shows up far more often
    hot = np.bincount([sample(logits, 10.0, 0, 1.0, rng.random()) for _ in range(2000)], minlength=5) / 2000
    assert hot[3] > 0.15 > counts[3]


# ------------------------------------------------------------------------------------ the CLI
GPT2_VOCAB = GPT2Config(max_seq_len=16, vocab_size=50257, padded_vocab_size=50304, num_layers=1, num_heads=2,
                        channels=16)


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    """One small GPT-2-vocabulary model saved every way --model accepts."""
    from llmnp.checkpoint import save_hf
    d = tmp_path_factory.mktemp("models")
    model = perturbed_model(np.float32, GPT2_VOCAB, seed=4)
    model.save_checkpoint(str(d / "model.bin"))
    run = d / "run"
    run.mkdir()
    model.save_checkpoint(str(run / "model_00000003.bin"))
    (run / "DONE_00000003").touch()
    perturbed_model(np.float32, GPT2_VOCAB, seed=5).save_checkpoint(str(run / "model_00000001.bin"))
    (run / "DONE_00000001").touch()                      # an older checkpoint: not the one to load
    perturbed_model(np.float32, GPT2_VOCAB, seed=6).save_checkpoint(str(run / "model_00000007.bin"))
    # a newer one with no DONE_ marker: it never finished writing, not the one to load either
    save_hf(str(d / "hf"), GPT2_VOCAB, model.parameters_to_host())
    return model, {"bin": d / "model.bin", "run": run, "hf": d / "hf", "safetensors": d / "hf" / "model.safetensors"}


def test_cli_streams_the_same_text_from_every_kind_of_model_path(model_paths, capsys):
    model, paths = model_paths
    prompt = "Hello"
    tokens = list(generate(model, [tokenizer.EOT] + tokenizer.encode(prompt), 10, temperature=0.9, seed=3))
    text = tokenizer.decode([t for t in tokens if t != tokenizer.EOT])
    for kind, path in paths.items():
        main(["--model", str(path), "--prompt", prompt, "-n", "10", "--temperature", "0.9", "--seed", "3",
              "--device", "cpu"])
        out = capsys.readouterr()
        assert out.out == prompt + text + "\n", kind


def test_cli_says_when_it_stops_at_max_seq_len(model_paths, capsys):
    _, paths = model_paths
    main(["--model", str(paths["bin"]), "-n", "100", "--temperature", "0", "--device", "cpu"])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"[model: {paths['bin']}]"                   # which file it read
    assert re.fullmatch(r"\[1 sample, 16 tokens in [0-9.]+ s: [0-9,.]+ tokens/s, cpu float32\]", err[1]), err
    assert err[2:] == ["[stopped after 16 tokens: the model reads at most 16 positions]"]


def test_cli_num_samples_prints_each_sample_and_tokens_per_second(model_paths, capsys):
    model, paths = model_paths
    prompt = "Hi"
    main(["--model", str(paths["bin"]), "--prompt", prompt, "-n", "5", "--num-samples", "3", "--seed", "2",
          "--device", "cpu"])
    out = capsys.readouterr()
    tokens = [tokenizer.EOT] + tokenizer.encode(prompt)
    new = generate_many(model, [tokens] * 3, 5, seed=2)
    texts = [prompt + tokenizer.decode([t for t in n if t != tokenizer.EOT]) for n in new]
    assert out.out == "".join(f"---\n{t}\n" for t in texts) + "---\n"
    assert len(set(texts)) > 1
    assert re.fullmatch(r"\[model: .*\]\n\[3 samples, \d+ tokens in [0-9.]+ s: [0-9,.]+ tokens/s, cpu float32\]\n", out.err)


@pytest.mark.parametrize("argv, message", [
    (["--model", "{bin}", "-n", "-1"], "-n/--max-new-tokens: -1 is not an integer >= 0"),
    (["--model", "{bin}", "--temperature", "-1"], "--temperature: -1 is not a finite number >= 0"),
    (["--model", "{bin}", "--temperature", "nan"], "--temperature: nan is not a finite number >= 0"),
    (["--model", "{bin}", "--top-p", "0"], "--top-p: 0 is not a number in (0, 1]"),
    (["--model", "{bin}", "--top-k", "-3"], "--top-k: -3 is not an integer >= 0"),
    (["--model", "{bin}", "--seed", "-1"], "--seed: -1 is not an integer in [0, 2^32)"),
    (["--model", "{bin}", "--num-samples", "0"], "--num-samples: 0 is not a positive integer"),
    (["--model", "{bin}", "--device", "cpu", "--dtype", "bf16"], "--dtype bf16 runs on the GPU only"),
    (["--model", "{bin}", "--prompt", "word " * 20], "the model reads at most 16 positions"),
    (["--model", "{tmp}/missing.bin"], "model not found"),
    (["--model", "{tmp}/nodone"], "no DONE_* marker"),
    (["--model", "{tmp}/small.bin"], "vocabulary has 40 tokens"),
])
def test_cli_bad_input_is_one_clear_line(model_paths, tmp_path, argv, message):
    _, paths = model_paths
    (tmp_path / "nodone").mkdir()
    perturbed_model(np.float32).save_checkpoint(str(tmp_path / "nodone" / "model_00000001.bin"))
    perturbed_model(np.float32).save_checkpoint(str(tmp_path / "small.bin"))
    argv = [a.format(bin=paths["bin"], tmp=tmp_path) for a in argv]
    with pytest.raises(UserError, match=re.escape(message)):
        main(argv)


def test_cli_error_is_one_line_on_stderr(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmnp.generate", "--model", str(tmp_path / "missing.bin")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


# ------------------------------------------------------------------------------------ the GPU

GPU_CONFIG = GPT2Config(max_seq_len=32, vocab_size=100, padded_vocab_size=128, num_layers=2, num_heads=4, channels=64)


@requires_gpu
@pytest.mark.parametrize("graph", [True, False])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_gpu_cached_logits_equal_gpu_full_forward_and_the_cpu(dtype, tol, graph):
    cpu = perturbed_model(np.float64, GPU_CONFIG)
    model = GPT2(GPU_CONFIG, device="cuda", dtype=dtype, init=False)
    model.load_parameters(cpu.parameters_to_host())
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, GPU_CONFIG.vocab_size, n).tolist() for n in (GPU_CONFIG.max_seq_len - 4, 1, 9)]
    seen, seqs = decoded_logits(model, prompts, 4, graph=graph, temperature=0, eot=-1)
    for b in range(len(prompts)):
        full = full_logits(model, seqs[b][:-1])
        ref = full_logits(cpu, seqs[b][:-1])
        assert sorted(seen[b]) == list(range(len(seqs[b]) - 1))
        for t, cached in seen[b].items():
            for name, r in (("gpu full forward", full[t]), ("cpu", ref[t])):
                rel = np.linalg.norm(cached - r) / np.linalg.norm(r)
                assert rel < tol, f"row {b} position {t}: {name} rel diff {rel:.2e}"
    if dtype == "float32":
        prompt = [5, 17, 3]
        assert list(generate(model, prompt, 20, temperature=0, eot=-1, graph=graph)) == \
            list(generate(cpu, prompt, 20, temperature=0, eot=-1))


@requires_gpu
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 40, 1.0), (1.3, 0, 0.8),
                                                       (0.9, 50, 0.9), (0, 0, 1.0)])
def test_gpu_sampler_draws_the_cpu_samplers_tokens(temperature, top_k, top_p):
    """sample_step on the GPU against the NumPy one, on the same logits, keys and positions: the same
    draws (a float32 sum on the GPU can land a draw on the other side of a boundary, rarely)."""
    import cupy as cp
    from llmnp.cuda import decode
    from llmnp import generate as ref
    B, V, Vp, Tc = 512, 1000, 1024, 8
    rng = np.random.default_rng(0)
    logits = np.zeros((B, 1, Vp), np.float32)
    logits[:, 0, :V] = 3 * rng.standard_normal((B, V))
    keys = np.array([stream_key(11, b) for b in range(B)], np.uint64)
    pos = rng.integers(0, Tc - 1, B).astype(np.int32)
    results = []
    for mod, xp in ((ref, np), (decode, cp)):
        out, tok, done = xp.full(B, -1, np.int32), xp.zeros(B, np.int32), xp.zeros(B, np.int32)
        p = xp.asarray(pos.copy())
        mod.sample_step(out, tok, p, done, xp.asarray(logits), xp.zeros((B, Tc), np.int32), xp.ones(B, np.int32),
                        xp.asarray(keys), V, temperature, top_k, top_p, -1)
        results.append((to_host(out), to_host(tok), to_host(p)))
    (out_cpu, tok_cpu, pos_cpu), (out_gpu, tok_gpu, pos_gpu) = results
    assert (out_cpu >= 0).all()
    assert (out_gpu == out_cpu).mean() >= 0.995, (out_gpu != out_cpu).sum()
    np.testing.assert_array_equal(pos_gpu, pos_cpu)
    np.testing.assert_array_equal(tok_gpu, out_gpu)
    if top_k:
        top = np.argsort(-logits[:, 0, :V], axis=1)[:, :top_k]
        assert all(o in t for o, t in zip(out_gpu, top))
