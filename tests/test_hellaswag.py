"""HellaSwag: eval files written here with struct (independently of any writer), scored by a model whose
answers are known in advance, so the expected accuracy is known without running the scorer's logic.

The "copy" model: every weight zero except wte = 10 * identity (V = C) and the final layernorm's
weight 1. Every block then adds nothing, the residual stream at a position is 10 * e_token, and the
logits are 10 * layernorm(e_token) . e_u: 38.7 for u = the current token, -2.6 for every other. So it
predicts "the next token repeats this one" with p ~ 1: an ending token that repeats the token before
it costs ~0 nats, any other ~41 nats, and an ending's mean loss is ~41 x (its non-repeats / its length).
"""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from llmnp import GPT2, GPT2Config
from llmnp.errors import UserError
from llmnp.hellaswag import completion_losses, evaluate, make_batch, rank_block, read_examples
from llmnp.params import PARAMETER_NAMES
from conftest import requires_gpu as gpu

V = 16
CONFIG = GPT2Config(max_seq_len=16, vocab_size=V, padded_vocab_size=32, num_layers=1, num_heads=1, channels=V)

# (label, context, 4 endings); "picks" = the ending of lowest mean non-repeat fraction, first on ties
EXAMPLES = [
    (0, [3, 5], [[5], [6], [7, 7], [2]]),                     # picks 0 (0/1): right
    # mean, not sum: [9,9,9,9,2] has 2 misses in 5 (0.4), [8] 1 in 1 (1.0) but the smaller sum
    (1, [4], [[8], [9, 9, 9, 9, 2], [4, 1], [7, 3, 3]]),      # picks 1 (0.4 < 0.5 < 0.67 < 1): right
    (3, [2, 2], [[2, 2], [5], [6], [7]]),                     # picks 0: wrong label
    # single-token endings: only the context's last token predicts them (the alignment)
    (2, [11], [[12], [13], [11], [14]]),                      # picks 2: right
    (0, [1, 2, 3, 4, 5, 6], [[6, 6], [1], [2], [3]]),         # picks 0, longest row: right
    (1, [9], [[9], [10], [10], [10]]),                        # picks 0: wrong label
]
EXPECTED_CORRECT = 4


def write_eval(path, examples, magic=20240522, version=1, n=None, patch=None):
    """llm.c's HellaSwag .bin: 256 int32 header, then per example uint16 65535, byte count, index,
    label, 4, context length + tokens, 4 x (ending length + tokens). patch(i, fields) may corrupt."""
    stream, longest = [], 0
    for i, (label, context, endings) in enumerate(examples):
        fields = [65535, 0, i, label, len(endings), len(context), *context]
        for end in endings:
            fields += [len(end), *end]
        fields[1] = 2 * len(fields)
        if patch:
            patch(i, fields)
        longest = max(longest, 2 * len(fields))
        stream += fields
    header = struct.pack("<256i", magic, version, len(examples) if n is None else n, longest, *[0] * 252)
    with open(path, "wb") as f:
        f.write(header + struct.pack(f"<{len(stream)}H", *stream))
    return path


def copy_model(dtype=np.float64):
    model = GPT2(CONFIG, dtype=dtype, init=False)       # all zeros
    model.params["wte"][:V] = 10.0 * np.eye(V)
    model.params["lnfw"][...] = 1.0
    model.params["ln1w"][...] = 1.0
    model.params["ln2w"][...] = 1.0
    return model


def random_model(seed=0):
    """O(1) random weights; the padded vocab rows large, so logits there would matter if they were used."""
    model = GPT2(CONFIG, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name in PARAMETER_NAMES:
        model.params[name][...] += 0.5 * rng.standard_normal(model.params[name].shape)
    model.params["wte"][V:] = 20.0 + rng.standard_normal((CONFIG.padded_vocab_size - V, V))
    return model


def random_examples(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        context = rng.integers(0, V, rng.integers(1, 8)).tolist()
        endings = [rng.integers(0, V, rng.integers(1, 6)).tolist() for _ in range(4)]
        out.append((int(rng.integers(0, 4)), context, endings))
    return out


@pytest.mark.parametrize("B", [4, 8, 10, 16, 24])   # 16: the last, partial batch holds the longest row
def test_copy_model_scores_the_known_answers(tmp_path, B):
    path = write_eval(tmp_path / "hs.bin", EXAMPLES)
    assert evaluate(copy_model(), path, B=B) == (EXPECTED_CORRECT, len(EXAMPLES))
    assert evaluate(copy_model(np.float32), path, B=B) == (EXPECTED_CORRECT, len(EXAMPLES))
    assert evaluate(copy_model(), path, B=B, limit=2) == (2, 2)


def test_copy_model_losses_are_the_non_repeat_fractions(tmp_path):
    examples = read_examples(write_eval(tmp_path / "hs.bin", EXAMPLES))
    losses = completion_losses(copy_model(), *make_batch(examples)).reshape(-1, 4)
    miss = 10 * (3.87298 + 0.25820)                 # 10 * (n_v[v] - n_v[u]) for C = 16, rounded
    expected = [[0, 1, 0.5, 1], [1, 0.4, 0.5, 2 / 3], [0, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    np.testing.assert_allclose(losses, miss * np.array(expected), atol=1e-3)


def test_batched_padded_scoring_equals_one_row_at_a_time(tmp_path):
    """Each row run alone at its exact length, a log-softmax over the first V logits by hand, the mean
    over the ending: the oracle for batching, padding, alignment and the padded vocab."""
    examples = random_examples(9, seed=2)
    path = write_eval(tmp_path / "hs.bin", examples)
    model = random_model()
    correct, oracle_losses = 0, []
    for label, context, endings in examples:
        losses = []
        for end in endings:
            tokens = np.array([context + end], np.int32)
            oracle = random_model()                     # a fresh model: activations sized for this row
            oracle.forward(tokens)
            logits = oracle.logits[0, :, :V]
            logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            losses.append(-np.mean([logp[len(context) - 1 + i, t] for i, t in enumerate(end)]))
        correct += int(np.argmin(losses) == label)
        oracle_losses += losses
    batched = completion_losses(model, *make_batch(read_examples(path)))
    np.testing.assert_allclose(batched, oracle_losses, rtol=1e-12)
    for B in (4, 12, 40):
        assert evaluate(random_model(), path, B=B) == (correct, 9)


def test_processes_take_contiguous_blocks_and_counts_are_allreduced(tmp_path):
    examples = random_examples(10, seed=3)
    path = write_eval(tmp_path / "hs.bin", examples)
    full = evaluate(random_model(), path, B=8)
    assert [rank_block(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [rank_block(6, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 6)]
    parts = [evaluate(random_model(), path, B=8, rank=r, world_size=4) for r in range(4)]
    assert [t for _, t in parts] == [3, 3, 3, 1]
    assert tuple(map(sum, zip(*parts))) == full
    seen = []

    def allreduce(counts):                     # stands in for MPI: adds the other ranks' counts
        seen.append(counts.tolist())
        return counts + sum(np.array(p) for r, p in enumerate(parts) if r != 1)
    assert evaluate(random_model(), path, B=8, rank=1, world_size=4, allreduce=allreduce) == full
    assert seen == [list(parts[1])]


def test_a_model_that_has_run_keeps_to_its_activations(tmp_path):
    path = write_eval(tmp_path / "hs.bin", EXAMPLES)
    model = copy_model()
    model.forward(np.zeros((4, 8), np.int32))          # as a training model with B=4, T=8 would have
    assert evaluate(model, path, B=16) == (EXPECTED_CORRECT, len(EXAMPLES))   # B capped to 4, T fits
    model = copy_model()
    model.forward(np.zeros((4, 4), np.int32))
    with pytest.raises(UserError, match="T=4"):
        evaluate(model, path)
    # rank 0's own block (example 0) fits in T=4, others' do not: it fails too, rather than wait for them
    with pytest.raises(UserError, match="T=4"):
        evaluate(model, path, rank=0, world_size=6)


def corrupt(i, fields, at, value):
    if i == 1:
        fields[at] = value


@pytest.mark.parametrize("kwargs, message", [
    (dict(magic=20240520), "bad magic 20240520"),
    (dict(version=2), "version 2 is not supported"),
    (dict(n=7), "ends early: the header says 7 examples, it holds 6"),
    (dict(n=5), "bytes after the 5 examples"),
    (dict(patch=lambda i, f: corrupt(i, f, 0, 7)), "example 1 .*start marker 65535, found 7"),
    (dict(patch=lambda i, f: corrupt(i, f, 1, 4)), "example 1 .*byte count field 4"),
    (dict(patch=lambda i, f: corrupt(i, f, 2, 5)), "example 1 .*index field 5"),
    (dict(patch=lambda i, f: corrupt(i, f, 3, 4)), "example 1 .*label 4"),
    (dict(patch=lambda i, f: corrupt(i, f, 4, 3)), "example 1 .*3 endings"),
    (dict(patch=lambda i, f: corrupt(i, f, 5, 0)), "example 1 .*empty context"),
])
def test_bad_files_say_what_is_wrong(tmp_path, kwargs, message):
    path = write_eval(tmp_path / "bad.bin", EXAMPLES, **kwargs)
    with pytest.raises(UserError, match=message):
        read_examples(path)


def test_short_missing_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match="HellaSwag file not found"):
        read_examples(tmp_path / "missing.bin")
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(UserError, match="truncated .*header alone is 1024"):
        read_examples(tmp_path / "short.bin")
    good = write_eval(tmp_path / "hs.bin", EXAMPLES).read_bytes()
    (tmp_path / "cut.bin").write_bytes(good[:-6])
    with pytest.raises(UserError, match="example 5 .*ends inside the example"):
        read_examples(tmp_path / "cut.bin")
    wide = [(0, [3, 40], [[5], [6], [7], [8]])]
    model = copy_model()
    with pytest.raises(UserError, match="token id 40, outside the model's vocabulary of 16"):
        evaluate(model, write_eval(tmp_path / "wide.bin", wide))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llmnp.hellaswag", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))


def test_cli_prints_llmc_line_and_bad_input_is_one_line(tmp_path):
    path = write_eval(tmp_path / "hs.bin", EXAMPLES)
    copy_model(np.float32).save_checkpoint(str(tmp_path / "copy.bin"))
    r = run_cli("--model", str(tmp_path / "copy.bin"), "--data", str(path), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"HellaSwag: 4/6 = {4 / 6:f}"
    bad = write_eval(tmp_path / "bad.bin", EXAMPLES, magic=1)
    r = run_cli("--model", str(tmp_path / "copy.bin"), "--data", str(bad))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert "bad magic 1" in r.stderr


# ------------------------------------------------------------------------------------ the GPU
@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_scores_as_the_cpu(tmp_path, dtype):
    """The copy model's known answers, and a random model's per-row losses and counts, on the GPU."""
    path = write_eval(tmp_path / "hs.bin", EXAMPLES)
    gpu_copy = GPT2(CONFIG, device="cuda", dtype=dtype, init=False)
    gpu_copy.load_parameters(copy_model(np.float32).parameters_to_host())
    assert evaluate(gpu_copy, path, B=8) == (EXPECTED_CORRECT, len(EXAMPLES))
    path = write_eval(tmp_path / "random.bin", random_examples(12, seed=4))
    cpu = random_model()
    gpu_model = GPT2(CONFIG, device="cuda", dtype=dtype, init=False)
    gpu_model.load_parameters(cpu.parameters_to_host().astype(np.float32))
    batch = make_batch(read_examples(path))
    want = completion_losses(cpu, *batch)
    got = completion_losses(gpu_model, *batch)
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == "float32" else 5e-2)
    if dtype == "float32":
        assert evaluate(gpu_model, path, B=8) == evaluate(random_model(), path, B=8)
