"""Generation: the KV-cache step against the full forward pass (logits at every position, and greedy
generation token for token), sampling's knobs, the max_seq_len stop, and the CLI on every kind of
model path. The end-to-end run (your text -> shards -> training -> generate) is tests/test_text.py."""
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_gpu

from llmnp import GPT2, GPT2Config, tokenizer
from llmnp.errors import UserError
from llmnp.generate import KVCache, forward_step, generate, main, sample, to_host
from llmnp.params import PARAMETER_NAMES

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


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-12, 1e-12), (np.float32, 1e-5, 1e-5)])
def test_cached_logits_equal_full_forward_at_every_position(dtype, rtol, atol):
    model = perturbed_model(dtype)
    T = TINY.max_seq_len
    tokens = np.random.default_rng(3).integers(0, TINY.vocab_size, T).astype(np.int32)
    model.forward(tokens[None, :])
    full = np.asarray(model.logits[0], dtype=np.float64)                  # (T, Vp)
    cache = KVCache(model)
    for t in range(T):
        cached = np.asarray(forward_step(model, cache, int(tokens[t])), dtype=np.float64)
        np.testing.assert_allclose(cached, full[t], rtol=rtol, atol=atol, err_msg=f"position {t}")
    with pytest.raises(ValueError, match="cache is full"):
        forward_step(model, cache, 0)


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
    assert sample(logits, 0, 40, 0.95, rng) == 1                       # greedy
    assert {sample(logits, 1.0, 1, 1.0, rng) for _ in range(50)} == {1}   # top-1 is greedy
    assert {sample(logits, 1.0, 2, 1.0, rng) for _ in range(200)} == {1, 4}
    assert {sample(logits, 1.0, 0, 1e-6, rng) for _ in range(50)} == {1}  # nucleus of one token
    # p = softmax: 0.0236 0.4733(1) 0.1741(2) 0.0087 0.2871(4): 0.47 + 0.29 = 0.76 < 0.8 takes token 2 too
    assert {sample(logits, 1.0, 0, 0.8, rng) for _ in range(300)} == {1, 2, 4}
    counts = np.bincount([sample(logits, 1.0, 0, 1.0, rng) for _ in range(4000)], minlength=5) / 4000
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(counts, p, atol=0.03)
    # a high temperature flattens: token 3 (least likely) shows up far more often
    hot = np.bincount([sample(logits, 10.0, 0, 1.0, rng) for _ in range(2000)], minlength=5) / 2000
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
    main(["--model", str(paths["bin"]), "-n", "100", "--temperature", "0"])
    err = capsys.readouterr().err
    assert err == "[stopped after 16 tokens: the model reads at most 16 positions]\n"


@pytest.mark.parametrize("argv, message", [
    (["--model", "{bin}", "-n", "-1"], "-n must be >= 0"),
    (["--model", "{bin}", "--temperature", "-1"], "--temperature must be >= 0"),
    (["--model", "{bin}", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--model", "{bin}", "--prompt", "word " * 20], "the model reads at most 16 positions"),
    (["--model", "{tmp}/missing.bin"], "no such file or folder"),
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
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_gpu_kv_cache_equals_gpu_full_forward_and_the_cpu(dtype, tol):
    cpu = perturbed_model(np.float32, GPU_CONFIG)
    model = GPT2(GPU_CONFIG, device="cuda", dtype=dtype, init=False)
    model.load_parameters(cpu.parameters_to_host())
    T = GPU_CONFIG.max_seq_len
    tokens = np.random.default_rng(3).integers(0, GPU_CONFIG.vocab_size, T).astype(np.int32)
    model.forward(tokens[None, :])
    full = to_host(model.logits[0])
    cpu.forward(tokens[None, :])
    cache = KVCache(model)
    for t in range(T):
        cached = to_host(forward_step(model, cache, int(tokens[t])))
        for name, ref in (("gpu full forward", full[t]), ("cpu", cpu.logits[0, t])):
            rel = np.linalg.norm(cached - ref) / np.linalg.norm(ref)
            assert rel < tol, f"position {t}: {name} rel diff {rel:.2e}"
    if dtype == "float32":
        prompt = [5, 17, 3]
        assert list(generate(model, prompt, 20, temperature=0, eot=-1)) == \
            list(generate(cpu, prompt, 20, temperature=0, eot=-1))
