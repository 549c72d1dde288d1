"""train_gpt2.py end to end on a small model and small shards: step lines, main.log, checkpoints, resume
reproducing the uninterrupted losses, and one-line errors for bad flags."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import train_gpt2
from llmnp.data import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss (\d+\.\d{6}) \(([+-](?:nan|\d+\.\d\d))z\)\| "
                       r"norm (\d+\.\d{4}) \(([+-](?:nan|\d+\.\d\d))z\)\| lr (\d\.\d\de[+-]\d\d) \| "
                       r"(\d+\.\d\d) ms \| (n/a|\d+\.\d%) bf16 MFU \| (\d+) tok/s$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A repetitive corpus (a few fixed token 'sentences' in random order), so that loss can fall fast."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 50257, size=12) for _ in range(5)]
    tokens = np.concatenate([sentences[i] for i in rng.integers(0, 5, size=300)])
    write_shard(str(d / "train.bin"), tokens)
    write_shard(str(d / "val.bin"), tokens[:600])
    return str(d / "train.bin"), str(d / "val.bin")


def run(shards, capsys, *flags):
    train, val = shards
    train_gpt2.main(["-e", "d1", "-i", train, "-j", val, "-b", "2", "-t", "16", "-l", "3e-3",
                     "-v", "4", "-m", "2", "-s", "1000", "-g", "8", *flags])
    return capsys.readouterr().out


def losses(out):
    return {int(m.group(1)): float(m.group(3)) for m in map(STEP_LINE.match, out.splitlines()) if m}


def test_trains_logs_and_checkpoints(shards, capsys, tmp_path):
    out_dir = str(tmp_path / "run")
    out = run(shards, capsys, "-x", "8", "-o", out_dir, "-n", "4")
    step_lines = [l for l in out.splitlines() if l.startswith("step ")]
    assert len(step_lines) == 8 and all(STEP_LINE.match(l) for l in step_lines), step_lines
    loss = losses(out)
    assert loss[8] < loss[1] - 1.0, loss
    assert out.count("val loss") == 3                                  # steps 0, 4 and 8
    assert "generating:\n---\n" in out                                 # the last step samples
    log = open(os.path.join(out_dir, "main.log")).read().splitlines()
    assert log[0].startswith("s:0 tel:") and sum(l.split()[1].startswith("trl:") for l in log) == 8
    assert re.fullmatch(r"s:7 trl:\d+\.\d{4} lr:\d\.\d{6} norm:\d+\.\d\d", [l for l in log if "trl" in l][-1])
    for step in (4, 8):
        for name in (f"model_{step:08d}.bin", f"state_{step:08d}_00000.bin", f"DONE_{step:08d}"):
            assert os.path.exists(os.path.join(out_dir, name)), name


def test_resume_reproduces_the_uninterrupted_run(shards, capsys, tmp_path):
    full = losses(run(shards, capsys, "-x", "8", "-o", str(tmp_path / "a"), "-n", "4", "-k", "cosine", "-q", "0.1"))
    # the same run, "killed" after its step-4 checkpoint: remove what came later, then resume
    b = tmp_path / "b"
    run(shards, capsys, "-x", "8", "-o", str(b), "-n", "4", "-k", "cosine", "-q", "0.1")
    for name in ("model_00000008.bin", "state_00000008_00000.bin", "DONE_00000008"):
        os.remove(b / name)
    out = run(shards, capsys, "-x", "8", "-o", str(b), "-n", "4", "-k", "cosine", "-q", "0.1", "-y", "1")
    resumed = losses(out)
    assert "resumed" in out and sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == full[step], (step, resumed[step], full[step])


def test_gradient_accumulation_matches_a_bigger_batch(shards, capsys):
    big = losses(run(shards, capsys, "-x", "3", "-sh", "0", "-b", "4"))
    accumulated = losses(run(shards, capsys, "-x", "3", "-sh", "0", "-b", "2", "-d", "64"))
    for step in big:
        assert abs(big[step] - accumulated[step]) < 1e-4


@pytest.mark.parametrize("flags, message", [
    (["--bogus", "1"], "unrecognized arguments"),
    (["-b", "3", "-d", "100"], "not a multiple of B*T*processes"),
    (["-k", "step"], "invalid choice"),
    (["-e", "missing.bin"], "not found"),
    (["-t", "4096"], "max_seq_len"),
    (["-i", "/nonexistent/*.bin"], "no files match"),
    (["--dtype", "bf16"], "needs --device cuda"),
])
def test_bad_flags_give_one_clear_line(shards, flags, message):
    train, val = shards
    args = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), "-e", "d1", "-i", train, "-j", val, "-x", "1"]
    if flags[0] == "-i":
        args = args[:4] + args[6:]
    p = subprocess.run(args + flags, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr


def test_ctrl_c_writes_a_checkpoint_then_resume_continues(shards, tmp_path):
    train, val = shards
    out_dir = str(tmp_path / "run")
    args = [sys.executable, "-u", os.path.join(ROOT, "train_gpt2.py"), "-e", "d1", "-i", train, "-j", val,
            "-b", "2", "-t", "16", "-x", "100000", "-v", "100000", "-s", "100000", "-o", out_dir]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in p.stdout:                      # wait until training runs, then interrupt
        if line.startswith("step    3/"):
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err                                  # 128 + SIGINT, after saving
    step = int(re.search(r"stopped after step (\d+) \(SIGINT\): the last complete checkpoint is step \1", err).group(1))
    assert step >= 3 and os.path.exists(os.path.join(out_dir, f"DONE_{step:08d}"))
    p = subprocess.run(args[:-4] + ["-x", str(step + 2), "-o", out_dir, "-y", "1"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and f"resumed from {out_dir} at step {step}" in p.stdout, p.stderr
    assert re.search(rf"^step +{step + 2}/{step + 2} ", p.stdout, re.M)


@pytest.mark.skipif(__import__("conftest").gpu_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_line(shards):
    train, val = shards
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train_gpt2.py"), "--device", "cuda", "-e", "d1",
                        "-i", train, "-j", val, "-x", "1"], capture_output=True, text=True, cwd=ROOT)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr


def test_sampling_rng_is_xorshift64_star():
    """llm.c's sampler coin: Marsaglia's xorshift64* (shifts 12, 25, 27, multiplier 0x2545F4914F6CDD1D,
    the high 32 bits out) from seed 1337, here in wrapping uint64 arithmetic, against the trainer's
    Python-integer version; floats are the top 24 bits over 2^24."""
    x = np.array([1337], dtype=np.uint64)
    rng = train_gpt2.XorShift(1337)
    for _ in range(200):
        x ^= x >> np.uint64(12)
        x ^= x << np.uint64(25)
        x ^= x >> np.uint64(27)
        with np.errstate(over="ignore"):
            want = int((x * np.uint64(0x2545F4914F6CDD1D))[0] >> np.uint64(32))
        assert rng.random_u32() == want
    floats = [train_gpt2.XorShift(seed).random_f32() for seed in (1, 1337, 2**63 + 5)]
    assert all(0.0 <= f < 1.0 for f in floats)
    copy = train_gpt2.XorShift(1337)
    u = copy.random_u32()
    assert train_gpt2.XorShift(1337).random_f32() == (u >> 8) / 2**24
