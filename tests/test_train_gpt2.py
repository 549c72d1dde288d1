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


# ----------------------------------------------------------------- the trainer's parts, called directly
# (found by mutation testing: each pins one rule of sample_tokens, save_checkpoint, resume,
# training_state, StopRequest, last_checkpoint_words, gpu_memory_line, preset and prepare_output_dir)
import struct                                                              # noqa: E402
import sys as _sys                                                         # noqa: E402
import types                                                               # noqa: E402

from llmnp import GPT2, GPT2Config                                         # noqa: E402
from llmnp.errors import Interrupted, UserError                            # noqa: E402

GPT2_EOT = 50256                                  # <|endoftext|>, where llm.c's samples start


def xorshift_coins(seed=1337):
    """llm.c's random_f32: xorshift64* in wrapping uint64 (shifts 12, 25, 27, the multiplier's high 32
    bits), the top 24 of those 32 bits over 2^24."""
    x = np.array([seed], dtype=np.uint64)
    while True:
        x ^= x >> np.uint64(12)
        x ^= x << np.uint64(25)
        x ^= x >> np.uint64(27)
        with np.errstate(over="ignore"):
            u32 = int((x * np.uint64(0x2545F4914F6CDD1D))[0] >> np.uint64(32))
        yield (u32 >> 8) / 2**24


def reference_sample(row, V, start, limit):
    """llm.c's sampling loop: softmax in float64, coin in [0, 1), the first index whose cumulative
    probability exceeds the coin, V-1 when none does (its guard against rounding; NaN never does)."""
    tokens, coins = [start], xorshift_coins()
    for t in range(1, limit):
        logits = np.asarray(row(t - 1, tokens), dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        past = np.nonzero(np.cumsum(probs) > next(coins))[0]
        tokens.append(int(past[0]) if past.size else V - 1)
    return tokens


class LogitsModel:
    """A stand-in for GPT2 in sample_tokens: forward records its input and makes the logits of
    position i from row(i, tokens); positions past the input hold a stale row (all on token 0)."""

    def __init__(self, V, row, max_seq_len=1024, T=64):
        self.config = types.SimpleNamespace(vocab_size=V, max_seq_len=max_seq_len)
        self.batch_shape = (1, T)
        self.row, self.inputs, self.V = row, [], V
        model = self

        class Logits:                     # model.logits[0, i, :V], made when read
            def __getitem__(self, key):
                b, i, cols = key
                tokens = model.inputs[-1][0].tolist()
                i = i % T
                r = np.asarray(row(i, tokens), np.float32) if i < len(tokens) else \
                    np.where(np.arange(V) == 0, 0.0, -np.inf).astype(np.float32)
                return r[cols]
        self.logits = Logits()

    def forward(self, x):
        x = np.asarray(x)
        assert x.ndim == 2 and x.shape[0] == 1
        self.inputs.append(x.copy())

    def to_host(self, a):
        return np.asarray(a)


def _row_64(i, tokens):
    """Logits of position i for a 64-token vocabulary: near 500 (so that exp(logits) alone overflows),
    a function of the position and of the token there; position 5 is NaN (a diverged model), and
    position 9 allows only the last token."""
    V = 64
    if i == 5:
        return np.full(V, np.nan)
    if i == 9:
        return np.where(np.arange(V) == V - 1, 500.0, -np.inf)
    r = 500.0 + 2.0 * np.random.default_rng(1000 * i + tokens[i]).standard_normal(V)
    r[(7 * tokens[i] + 1) % V] += 3.0
    return r


def test_sample_tokens_follows_llmcs_sampler():
    """Start token min(EOT, V-1) (V=64: 63), logits row t-1 of the forward of the t tokens so far,
    softmax, xorshift64*(1337) coin, first cumulative probability past the coin; a NaN row gives V-1."""
    got = []
    model = LogitsModel(64, _row_64, T=40)
    tokens = train_gpt2.sample_tokens(model, 30, got.append)
    want = reference_sample(_row_64, 64, 63, 30)
    assert tokens == want and got == want[1:]
    assert want[6] == 63 and want[10] == 63                  # the NaN row and the last-token row
    assert len(set(want)) > 10                               # the coin matters
    assert [x.tolist()[0] for x in model.inputs] == [want[:n] for n in range(1, 30)]


@pytest.mark.parametrize("gen_tokens, T, max_seq_len", [(7, 40, 1024), (30, 9, 1024), (30, 40, 11)])
def test_sample_tokens_stops_at_the_smallest_limit(gen_tokens, T, max_seq_len):
    """min(-g, the activations' T, max_seq_len) tokens, the start token included."""
    limit = min(gen_tokens, T, max_seq_len)
    model = LogitsModel(64, lambda i, tokens: _row_64(i + 20, [0] * (i + 21)), max_seq_len=max_seq_len, T=T)
    got = []
    tokens = train_gpt2.sample_tokens(model, gen_tokens, got.append)
    assert len(tokens) == limit and len(got) == limit - 1
    assert tokens == reference_sample(lambda i, t: _row_64(i + 20, [0] * (i + 21)), 64, 63, limit)


def test_sample_tokens_on_a_cumulative_boundary_takes_the_next_token():
    """A uniform row over V = 2^19 tokens: cumulative probabilities k / 2^19 and coins m / 2^24 are exact,
    so a coin whose m is a multiple of 32 lands exactly on one; the token is then the next one (llm.c's
    coin < cdf). V > EOT: the sample starts from EOT."""
    V = 2**19
    coins = xorshift_coins()
    ms = [int(next(coins) * 2**24) for _ in range(40)]       # ms[t - 1]: the coin of token t
    ties = [t for t in range(1, 40) if ms[t - 1] % 32 == 0]
    assert ties and ties[0] < 30                             # seed 1337 has one early (m = 8885600)
    limit = ties[0] + 1
    uniform = lambda i, tokens: np.zeros(V)                  # noqa: E731
    tokens = train_gpt2.sample_tokens(LogitsModel(V, uniform), limit, lambda tok: None)
    want = reference_sample(uniform, V, GPT2_EOT, limit)
    assert tokens == want
    assert want[-1] == ms[limit - 2] * V // 2**24            # the coin is k exactly: token k, not k - 1


TINY = GPT2Config(max_seq_len=32, vocab_size=64, padded_vocab_size=128, num_layers=2, num_heads=2, channels=16)


class Processes:
    """A stand-in for Distributed: process `rank` of `world_size`, recording what it is asked to gather."""

    def __init__(self, rank=0, world_size=1):
        self.rank, self.world_size, self.gathered = rank, world_size, []

    def gather_master_weights(self, model):
        self.gathered.append(model)

    def barrier(self):
        pass


def tiny_loader(tmp_path, rank=0, world_size=1):
    from llmnp.data import DataLoader
    path = tmp_path / "train.bin"
    if not path.exists():
        write_shard(str(path), np.arange(2000) % 64)
    return DataLoader(str(path), 2, 8, rank=rank, world_size=world_size, vocab_size=64)


def checkpoint_args(out, dtype="fp32", kept=0, every=0, major=0):
    return types.SimpleNamespace(output_dir=str(out), dtype=dtype, checkpoints_kept=kept, checkpoint_every=every,
                                 major_every=major, resume=0)


def saved_steps(out):
    """{step: the kinds of file it has} in a run folder."""
    steps = {}
    for f in os.listdir(out):
        m = re.fullmatch(r"(model|state|DONE)_(\d{8})(_\d{5})?(\.bin)?", f)
        if m:
            steps.setdefault(int(m.group(2)), set()).add(m.group(1))
    return steps


@pytest.mark.parametrize("dtype, version, itemsize", [("fp32", 3, 4), ("bf16", 5, 2)])
def test_save_checkpoint_writes_llmcs_files(tmp_path, dtype, version, itemsize):
    """model_%08d.bin in the run's dtype (llm.c's header: magic 20240326, version 3 fp32 / 5 bf16, maxT,
    V, L, NH, C, Vp; then the parameters), the state file, and an empty DONE_%08d; the model is handed to
    gather_master_weights first (ZeRO-1's master weights come home before they are saved)."""
    model = GPT2(TINY, seed=3).allocate(2, 8)
    dist, out = Processes(), tmp_path / "run"
    out.mkdir()
    train_gpt2.save_checkpoint(checkpoint_args(out, dtype), dist, model, tiny_loader(tmp_path), 12, lambda *a, **k: None)
    assert len(dist.gathered) == 1 and dist.gathered[0] is model
    assert saved_steps(out) == {12: {"model", "state", "DONE"}}
    assert os.path.getsize(out / "DONE_00000012") == 0
    raw = (out / "model_00000012.bin").read_bytes()
    n = model.num_parameters
    assert len(raw) == 256 * 4 + n * itemsize
    assert struct.unpack("<8i", raw[:32]) == (20240326, version, 32, 64, 2, 2, 16, 128)
    weights = model.params_memory.astype(np.float32)
    if dtype == "fp32":
        assert np.array_equal(np.frombuffer(raw[1024:], "<f4"), weights)
    else:
        import ml_dtypes
        assert np.array_equal(np.frombuffer(raw[1024:], "<u2"), weights.astype(ml_dtypes.bfloat16).view(np.uint16))


@pytest.mark.parametrize("kept, every, major, steps, want", [
    (1, 1, 0, [1, 2, 3, 4], [4]),               # -nk 1: exactly one
    (2, 1, 0, [1, 2, 3, 4], [3, 4]),
    (1, 2, 0, [2, 4, 6], [6]),                  # the oldest is step - kept * every
    (1, 0, 0, [5], [5]),                        # -n 0 (only at the end): nothing to delete
    (1, 1, 1, [1, 2, 3], [1, 2, 3]),            # -nm 1: every checkpoint is a major one
    (1, 1, 2, [1, 2, 3, 4, 5], [2, 4, 5]),
    (0, 1, 0, [1, 2, 3], [1, 2, 3]),            # -nk 0: all
])
def test_save_checkpoint_keeps_the_last_nk(tmp_path, kept, every, major, steps, want):
    model = GPT2(TINY, seed=3).allocate(2, 8)
    out = tmp_path / "run"
    out.mkdir()
    args, loader = checkpoint_args(out, kept=kept, every=every, major=major), tiny_loader(tmp_path)
    for step in steps:
        train_gpt2.save_checkpoint(args, Processes(), model, loader, step, lambda *a, **k: None)
    assert saved_steps(out) == {s: {"model", "state", "DONE"} for s in want}


def state_file(out, step, rank, **fields):
    from llmnp.checkpoint import save_state
    path = os.path.join(out, f"state_{step:08d}_{rank:05d}.bin")
    save_state(path, step, rank=rank, **fields)
    return path


def test_resume_loads_this_processes_shard_and_loader_position(tmp_path):
    """ZeRO-1, process 1 of 2: the state file of rank 1 holds AdamW's m and v for this process's slice
    [start, end) only (load_state is told its end - start parameters), and the loader's position."""
    model = GPT2(TINY, seed=3)
    N = model.num_parameters
    start = N // 3
    model.set_shard(start, N)
    model.allocate(2, 8)
    m, v = np.linspace(-1, 1, N - start, dtype=np.float32), np.linspace(0, 2, N - start, dtype=np.float32)
    writer = tiny_loader(tmp_path, rank=1, world_size=2)
    for _ in range(3):
        writer.next_batch()
    out = tmp_path / "run"
    state_file(out, 4, 1, m=m, v=v, world_size=2, loader_state=writer.state_dict())
    loader = tiny_loader(tmp_path, rank=1, world_size=2)
    args = types.SimpleNamespace(output_dir=str(out))
    assert train_gpt2.resume(args, Processes(1, 2), model, loader, (4, str(out / "model_00000004.bin"))) == 4
    assert np.array_equal(model.m_memory, m) and np.array_equal(model.v_memory, v)
    assert loader.current_sample_idx == 3


def test_resume_restores_the_master_weights(tmp_path):
    """bf16 parameters with fp32 master weights: the state's master weights come back, and the bf16
    parameters are them rounded to nearest."""
    import ml_dtypes
    model = GPT2(TINY, dtype="bfloat16", seed=3).allocate(2, 8)
    N = model.num_parameters
    master = np.linspace(-0.3, 0.3, N, dtype=np.float32) + np.float32(1e-4)   # not what init drew
    out = tmp_path / "run"
    state_file(out, 6, 0, m=np.full(N, 0.5, np.float32), v=np.full(N, 0.25, np.float32), master=master,
               loader_state=tiny_loader(tmp_path).state_dict())
    args = types.SimpleNamespace(output_dir=str(out))
    assert train_gpt2.resume(args, Processes(), model, tiny_loader(tmp_path), (6, "")) == 6
    assert np.array_equal(model.master_memory, master)
    assert np.array_equal(model.params_memory.astype(np.float32), master.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_resume_refuses_a_state_of_another_model(tmp_path):
    model = GPT2(TINY, seed=3).allocate(2, 8)
    N = model.num_parameters
    out = tmp_path / "run"
    state_file(out, 4, 0, m=np.zeros(N + 16, np.float32), v=np.zeros(N + 16, np.float32))
    args = types.SimpleNamespace(output_dir=str(out))
    with pytest.raises(UserError, match=f"for {N + 16:,} parameters, this run's model has {N:,}"):
        train_gpt2.resume(args, Processes(), model, tiny_loader(tmp_path), (4, ""))


@pytest.mark.parametrize("written_by, this, words", [
    ((0, 2), (0, 1), "written by process 0 of 2, this is process 0 of 1"),     # another count alone
    ((1, 2), (0, 2), "written by process 1 of 2, this is process 0 of 2"),     # another rank alone
])
def test_resume_refuses_a_state_of_another_process(tmp_path, written_by, this, words):
    model = GPT2(TINY, seed=3).allocate(2, 8)
    N = model.num_parameters
    out = tmp_path / "run"
    rank, world_size = this
    from llmnp.checkpoint import save_state
    os.makedirs(out)                             # this process's file name, the header of another process
    save_state(str(out / f"state_00000004_{rank:05d}.bin"), 4, np.zeros(N, np.float32), np.zeros(N, np.float32),
               rank=written_by[0], world_size=written_by[1],
               loader_state=tiny_loader(tmp_path, rank, world_size).state_dict())
    args = types.SimpleNamespace(output_dir=str(out))
    with pytest.raises(UserError, match=re.escape(words)):
        train_gpt2.resume(args, Processes(rank, world_size), model, tiny_loader(tmp_path, rank, world_size), (4, ""))


def test_resume_without_this_processes_state_counts_the_others(tmp_path):
    model = GPT2(TINY, seed=3).allocate(2, 8)
    out = tmp_path / "run"
    out.mkdir()
    args = types.SimpleNamespace(output_dir=str(out))
    with pytest.raises(UserError, match="the checkpoint at step 4 has no state files"):
        train_gpt2.resume(args, Processes(), model, tiny_loader(tmp_path), (4, ""))
    for rank in (1, 2):
        (out / f"state_00000004_{rank:05d}.bin").write_bytes(b"")
    (out / "state_00000008_00003.bin").write_bytes(b"")           # another step's: not counted
    with pytest.raises(UserError, match=re.escape("has 2 state file(s), this run has 1 processes")):
        train_gpt2.resume(args, Processes(), model, tiny_loader(tmp_path), (4, ""))


def test_training_state_is_this_processes_share(tmp_path):
    """What save_state writes: the step, this process's rank of the count, AdamW's m and v, the master
    weights (bf16 parameters) and the loader's position."""
    from llmnp.checkpoint import load_state, save_state
    model = GPT2(TINY, dtype="bfloat16", seed=3).allocate(2, 8)
    N = model.num_parameters
    model.m_memory[...] = np.linspace(-1, 1, N)
    model.v_memory[...] = np.linspace(0, 1, N)
    model.master_memory[...] = np.linspace(-0.5, 0.5, N)
    loader = tiny_loader(tmp_path, rank=2, world_size=3)
    loader.next_batch()
    state = train_gpt2.training_state(model, Processes(2, 3), loader, 7)
    assert (state["step"], state["rank"], state["world_size"]) == (7, 2, 3)
    assert np.array_equal(state["m"], np.linspace(-1, 1, N, dtype=np.float32))
    assert np.array_equal(state["v"], np.linspace(0, 1, N, dtype=np.float32))
    assert np.array_equal(state["master"], np.linspace(-0.5, 0.5, N, dtype=np.float32))
    assert state["loader_state"] == loader.state_dict() and state["loader_state"]["current_sample_idx"] == 1
    save_state(str(tmp_path / "s.bin"), **state)
    back = load_state(str(tmp_path / "s.bin"), num_parameters=N)
    assert (back["rank"], back["world_size"]) == (2, 3) and np.array_equal(back["master"], state["master"])


# ---------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("saving", [True, False])
def test_stop_request_finishes_the_step_then_a_second_signal_stops_at_once(saving):
    """In process: the first signal sets the flag and says (flushed at once) what happens next; a second
    one raises Interrupted saying whether and where anything was saved; close() puts back the handlers
    that were there before."""
    lines = []

    def log(*a, **k):
        lines.append((a, k))

    def before_int(signum, frame):
        pass

    def before_term(signum, frame):
        pass
    outer = signal.signal(signal.SIGINT, before_int), signal.signal(signal.SIGTERM, before_term)
    try:
        stop = train_gpt2.StopRequest(log, saving=saving)
        assert signal.getsignal(signal.SIGINT) == stop.handle and signal.getsignal(signal.SIGTERM) == stop.handle
        assert stop.signum is None and stop.saved_step is None and lines == []
        stop.handle(signal.SIGTERM, None)
        assert stop.signum == signal.SIGTERM
        assert len(lines) == 1 and lines[0][1] == {"flush": True}
        (text,), _ = lines[0]
        then = "writing a checkpoint" if saving else "stopping; nothing will be saved (no -o given)"
        assert text == f"\nSIGTERM: finishing this step, then {then}; SIGTERM again stops at once"
        with pytest.raises(Interrupted) as e:
            stop.handle(signal.SIGINT, None)
        assert e.value.signum == signal.SIGINT
        saved = "nothing saved since the start" if saving else "nothing was saved (no -o given)"
        assert str(e.value) == f"SIGINT again: stopped at once; {saved}"
        if saving:
            stop.saved_step = 8
            with pytest.raises(Interrupted, match="^SIGTERM again: stopped at once; nothing saved after the "
                                                  "checkpoint at step 8$"):
                stop.handle(signal.SIGTERM, None)
        assert stop.signum == signal.SIGTERM and len(lines) == 1      # the first signal's, kept
        stop.close()
        assert signal.getsignal(signal.SIGINT) is before_int and signal.getsignal(signal.SIGTERM) is before_term
    finally:
        signal.signal(signal.SIGINT, outer[0])
        signal.signal(signal.SIGTERM, outer[1])


def test_last_checkpoint_words(tmp_path):
    """Nothing saved (and why: no -o), or the newest step with both its DONE marker and its model file."""
    assert train_gpt2.last_checkpoint_words(None) == "nothing was saved (no -o given)"
    assert train_gpt2.last_checkpoint_words(str(tmp_path / "never_made")) == "nothing was saved"
    out = tmp_path / "run"
    out.mkdir()
    assert train_gpt2.last_checkpoint_words(str(out)) == "nothing was saved"
    for name in ("DONE_00000004", "model_00000004.bin", "DONE_00000007", "model_00000009.bin"):
        (out / name).write_bytes(b"")            # 7: no model file; 9: not complete
    assert train_gpt2.last_checkpoint_words(str(out)) == \
        f"the last complete checkpoint is step 4 in {out} (-y 1 resumes from it)"


def test_gpu_memory_line_from_cupys_numbers(monkeypatch):
    """-lg: in use = total - free, of total, and the pool's bytes, each in GiB (2^30 bytes)."""
    total, free, pool = 85_899_345_920, 20_000_000_000, 7_000_000_000     # 80 GiB; 61.37 and 6.52 GiB
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (free, total)))
    fake.get_default_memory_pool = lambda: types.SimpleNamespace(total_bytes=lambda: pool)
    monkeypatch.setitem(_sys.modules, "cupy", fake)
    assert train_gpt2.gpu_memory_line() == "gpu: 61.4 of 80.0 GiB in use (6.5 GiB by this process's pool)"


# ---------------------------------------------------------------------------------- setup
def test_preset_tells_a_missing_file_from_a_bad_descriptor():
    c = train_gpt2.preset("d2")
    assert (c.num_layers, c.num_heads, c.channels) == (2, 2, 128)
    for name in ("missing.bin", os.path.join("runs", "d12")):
        with pytest.raises(UserError, match=f"model file {re.escape(name)} not found"):
            train_gpt2.preset(name)
    with pytest.raises(UserError, match="unknown model descriptor 'gpt4'"):
        train_gpt2.preset("gpt4")


@pytest.mark.parametrize("names, refused", [
    ([], False),
    (["notes.txt", "model_final.bin", "DONE", "state_123.bin", "main.log.old"], False),   # not a run's
    (["main.log"], True),
    (["DONE_00000005"], True),
    (["model_00000005.bin"], True),
    (["state_00000005_00000.bin"], True),
])
def test_prepare_output_dir_refuses_only_another_runs_files(tmp_path, names, refused):
    out = tmp_path / "run"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"")
    args = types.SimpleNamespace(output_dir=str(out), resume=0)
    if refused:
        with pytest.raises(UserError, match=re.escape(f"-o {out} already holds a run (1 files")):
            train_gpt2.prepare_output_dir(args)
    else:
        assert train_gpt2.prepare_output_dir(args) is None
    for name in ("DONE_00000003", "model_00000003.bin"):
        (out / name).write_bytes(b"")
    assert train_gpt2.prepare_output_dir(types.SimpleNamespace(output_dir=str(out), resume=1)) == \
        (3, os.path.join(str(out), "model_00000003.bin"))


# ------------------------------------------------------------------------- the step's parts
class StepProcesses(Processes):
    """One process, recording which model its gradients were reduced for."""

    def __init__(self):
        super().__init__()
        self.reduced = []

    def reduce_gradients(self, model):
        self.reduced.append(model)

    def grad_norm(self, model):
        return model.grad_norm()

    def average(self, x):
        return x


def test_forward_backward_accumulates_the_steps_micro_batches(tmp_path):
    """Two micro-batches read in order: their mean loss, the gradients reduced over processes (for this
    model), and the batches themselves (for --check-finite's re-run)."""
    model = GPT2(TINY, seed=3).allocate(2, 8)
    dist = StepProcesses()
    args = types.SimpleNamespace(overfit_single_batch=0, check_finite=False)
    loss, norm, batches = train_gpt2.forward_backward(args, dist, model, tiny_loader(tmp_path), 2)
    reader = tiny_loader(tmp_path)
    want = [reader.next_batch() for _ in range(2)]
    assert len(batches) == 2 and all(np.array_equal(b[0], w[0]) and np.array_equal(b[1], w[1])
                                     for b, w in zip(batches, want))
    fresh = GPT2(TINY, seed=3)
    assert loss == pytest.approx(sum(float(fresh.forward(x, y)) for x, y in want) / 2, rel=1e-6)
    assert len(dist.reduced) == 1 and dist.reduced[0] is model
    assert norm == model.grad_norm() and norm > 0


@pytest.mark.parametrize("check_finite", [False, True])
def test_forward_backward_checks_layers_only_with_check_finite(tmp_path, check_finite):
    """A NaN weight: with --check-finite the first layer output holding it stops the step (NonFinite);
    without, the step runs through and the loss comes out NaN (check_finite catches it after)."""
    from llmnp import nonfinite
    model = GPT2(TINY, seed=3).allocate(2, 8)
    model.params["wpe"][...] = np.nan
    args = types.SimpleNamespace(overfit_single_batch=0, check_finite=check_finite)
    if check_finite:
        with pytest.raises(nonfinite.NonFinite):
            train_gpt2.forward_backward(args, StepProcesses(), model, tiny_loader(tmp_path), 1)
    else:
        loss, _, _ = train_gpt2.forward_backward(args, StepProcesses(), model, tiny_loader(tmp_path), 1)
        assert np.isnan(loss)
    assert model.ops is not None and not isinstance(model.ops, nonfinite.CheckedOps)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),        # bf16 dense tensor-core peaks, NVIDIA's data sheets
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("Tesla T4", None),                       # not in the table: MFU n/a
])
def test_device_peak_flops_by_the_gpus_name(monkeypatch, name, peak):
    asked = []

    def properties(device_id):
        asked.append(device_id)
        return {"name": name.encode()}
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceProperties=properties),
                                      Device=lambda: types.SimpleNamespace(id=3))
    monkeypatch.setitem(_sys.modules, "cupy", fake)
    assert train_gpt2.device_peak_flops("cpu") is None and asked == []
    assert train_gpt2.device_peak_flops("cuda") == peak and asked == [3]


def test_outlier_detector_window():
    """NaN until 128 values are in; then the z-score of a value 5 standard deviations from the last 128
    values (llm.c's rule, which counts the new value into the window, gives about 4.5; against the 128
    before it, 5); a value of the 129th-newest's size is no outlier once that one has left the window;
    a constant window gives no positive z (llm.c: 0)."""
    rng = np.random.default_rng(0)
    det = train_gpt2.OutlierDetector()
    values = [1000.0] + list(10.0 + 0.5 * rng.standard_normal(127 + 10))
    zs = [det.update(v) for v in values]
    assert all(np.isnan(zs[:128])) and not any(np.isnan(zs[128:]))
    last = np.array(values[-128:])
    z = det.update(last.mean() + 5 * last.std())
    assert 4.0 < z < 6.0
    assert all(abs(z) < 4 for z in zs[129:])               # the 1000 has left the window
    flat = train_gpt2.OutlierDetector()
    for _ in range(128):
        flat.update(2.0)
    assert not flat.update(2.0) > 0 and not flat.update(2.0) < 0


def test_outlier_detector_is_llmcs_statistic():
    """llm.c's update_detector (outlier_detector.h): the first 128 values give NaN; from the 129th on, the
    value joins the window of the last 128 (itself included) and its z-score is taken there, with the
    population standard deviation; a constant window gives 0. Reference: NumPy in float64 over the
    same window."""
    rng = np.random.default_rng(1)
    values = list(3.0 + rng.standard_normal(300)) + [50.0] + [7.0] * 200
    det = train_gpt2.OutlierDetector()
    for i, v in enumerate(values):
        z = det.update(v)
        if i < 128:
            assert np.isnan(z)
            continue
        window = np.array(values[i - 127:i + 1])
        want = 0.0 if window.std() == 0 else (v - window.mean()) / window.std()
        assert z == pytest.approx(want, rel=1e-9, abs=1e-12), i
    assert det.update(7.0) == 0.0                               # 128 sevens: constant


def test_check_finite_stops_at_a_nonfinite_value_and_names_the_layer(monkeypatch, tmp_path):
    """A finite value passes; NaN or inf stops the run (UserError) saying the step, what and the value,
    with the layer nonfinite.locate finds when it re-runs the step's micro-batches (inputs and targets
    apart, the step's accumulation and number), and what was saved."""
    from llmnp import nonfinite
    calls, found = [], []

    def locate(model, inputs, targets, grad_accum_steps=1, step=None):
        calls.append((model, inputs, targets, grad_accum_steps, step))
        return found[0] if found else None
    monkeypatch.setattr(nonfinite, "locate", locate)
    model = object()
    xs, ys = [np.full((2, 4), i) for i in (1, 2)], [np.full((2, 4), i) for i in (3, 4)]
    batches = list(zip(xs, ys))
    assert train_gpt2.check_finite(3, "loss", 2.5, None, model, batches, 2) is None and calls == []
    with pytest.raises(UserError) as e:
        train_gpt2.check_finite(5, "loss", float("nan"), None)
    assert str(e.value).startswith("step 5: the loss is nan (training diverged") and calls == []
    assert str(e.value).endswith(": nothing was saved (no -o given)")
    with pytest.raises(UserError) as e:
        train_gpt2.check_finite(7, "gradient norm", float("inf"), str(tmp_path), model, batches, 2)
    assert len(calls) == 1 and calls[0][0] is model and calls[0][3:] == (2, 7)
    assert [a.tolist() for a in calls[0][1]] == [x.tolist() for x in xs]
    assert [a.tolist() for a in calls[0][2]] == [y.tolist() for y in ys]
    assert str(e.value).startswith("step 7: the gradient norm is inf (running the step again with checks found no "
                                   "layer output that was not finite) (training diverged")
    assert str(e.value).endswith(": nothing was saved")
    found.append("step 7: layer 1 attention_forward made NaN in atty")
    with pytest.raises(UserError) as e:
        train_gpt2.check_finite(7, "val loss", float("nan"), None, model, batches[:1])
    assert calls[-1][3:] == (1, 7)
    assert str(e.value).startswith("step 7: layer 1 attention_forward made NaN in atty; the val loss is nan "
                                   "(training diverged")


def test_hellaswag_examples_checked_before_step_1(monkeypatch, tmp_path):
    """-h 1: the examples of dev/data/hellaswag/hellaswag_val.bin, checked against the model and B, T: B
    of 4 (one example's 4 endings) suffices, and T of exactly the longest row (context + longest ending
    - 1 = 3 + 2 - 1 here); -h 0, or no file (said once), gives None."""
    from llmnp.hellaswag import write_eval_file
    monkeypatch.chdir(tmp_path)
    model = GPT2(TINY, seed=3)
    lines = []
    h1, h0 = types.SimpleNamespace(hellaswag=1), types.SimpleNamespace(hellaswag=0)
    assert train_gpt2.hellaswag_examples(h1, model, 4, 8, lines.append) is None
    assert len(lines) == 1 and "dev/data/hellaswag/hellaswag_val.bin not found" in lines[0]
    example = {"label": 1, "ctx_tokens": [1, 2, 3], "ending_tokens": [[4], [5, 6], [7], [8]]}
    write_eval_file("dev/data/hellaswag/hellaswag_val.bin", [example, dict(example, label=2)])
    assert train_gpt2.hellaswag_examples(h0, model, 4, 8, lines.append) is None
    examples = train_gpt2.hellaswag_examples(h1, model, 4, 4, lines.append)
    assert [(e.label, e.context, e.endings) for e in examples] == [(1, [1, 2, 3], [[4], [5, 6], [7], [8]]),
                                                                   (2, [1, 2, 3], [[4], [5, 6], [7], [8]])]
    with pytest.raises(UserError, match="HellaSwag examples need up to 4 positions, -t is 3"):
        train_gpt2.hellaswag_examples(h1, model, 4, 3, lines.append)
    with pytest.raises(UserError, match="-h 1 needs -b 4 or more"):
        train_gpt2.hellaswag_examples(h1, model, 3, 8, lines.append)
    write_eval_file("dev/data/hellaswag/hellaswag_val.bin", [dict(example, ctx_tokens=[1, 2, 64])])
    with pytest.raises(UserError, match="hellaswag_val.bin: holds token id 64"):
        train_gpt2.hellaswag_examples(h1, model, 4, 8, lines.append)
    assert len(lines) == 1


def test_load_model_builds_what_the_flags_ask(tmp_path, monkeypatch):
    """-e dN: a random init from --seed; -e FILE, or the device's default file when -e is absent; -y 1:
    the checkpoint (with an -e of the same shape); each in --dtype with -r and -w as given."""
    monkeypatch.chdir(tmp_path)
    lines = []
    flags = dict(model="d1", device="cpu", dtype="fp32", recompute=2, master_weights=1, seed=5)
    model = train_gpt2.load_model(types.SimpleNamespace(**flags), lines.append)
    assert lines == ["initialising a random d1 (seed 5)"] and model.recompute == 2
    assert np.array_equal(model.params_memory, GPT2(GPT2Config.preset("d1"), seed=5).params_memory)
    for w in (0, 1):
        model = train_gpt2.load_model(types.SimpleNamespace(**dict(flags, dtype="bf16", master_weights=w)), print)
        assert model.dtype.name == "bfloat16" and (model.master_memory is not None) == bool(w)
    saved = GPT2(TINY, seed=9)
    saved.save_checkpoint("tiny.bin")
    saved.save_checkpoint(train_gpt2.DEFAULT_MODEL["cpu"])
    for name in ("tiny.bin", None):                          # None: the default file, found here
        model = train_gpt2.load_model(types.SimpleNamespace(**dict(flags, model=name)), print)
        assert model.config == TINY and model.recompute == 2
        assert np.array_equal(model.params_memory, saved.params_memory)
    for name in (None, "tiny.bin"):
        model = train_gpt2.load_model(types.SimpleNamespace(**dict(flags, model=name, dtype="bf16")), lines.append,
                                      checkpoint=(3, "tiny.bin"))
        assert lines[-1] == "resuming from tiny.bin (step 3)" and model.recompute == 2
        assert model.config == TINY and np.array_equal(model.master_memory, saved.params_memory)
    with pytest.raises(UserError, match="-e d1 is a L=1"):
        train_gpt2.load_model(types.SimpleNamespace(**flags), print, checkpoint=(3, "tiny.bin"))


def test_a_missing_default_model_falls_back_to_a_random_d12(tmp_path, monkeypatch):
    built = []

    class Recorder:                               # GPT2 itself would draw 124M weights
        def __init__(self, config, seed=42, **make):
            built.append((config, seed, make))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_gpt2, "GPT2", Recorder)
    lines = []
    args = types.SimpleNamespace(model=None, device="cpu", dtype="fp32", recompute=1, master_weights=1, seed=7)
    train_gpt2.load_model(args, lines.append)
    assert built == [(GPT2Config.preset("d12"), 7, dict(device="cpu", dtype=np.float32, recompute=1,
                                                         master_weights=True))]
    assert "gpt2_124M.bin not found: training a randomly initialised d12" in lines[0]
    with pytest.raises(UserError, match="model file missing.bin not found"):
        train_gpt2.load_model(types.SimpleNamespace(**dict(vars(args), model="missing.bin")), print)


def test_val_loss_is_the_mean_over_m_batches(tiny_run, capsys):
    """The step-0 val loss: the mean of the model's losses on the first -m val batches (2 of the 18 here;
    -m -1: all), computed again here with the model file and a loader of its own."""
    from llmnp.data import DataLoader
    flags = dict(zip(tiny_run[::2], tiny_run[1::2]))
    assert train_gpt2.main(tiny_run + ["-x", "1", "-v", "1", "-m", "2", "-s", "0"]) == 0
    got = [float(l.split()[-1]) for l in capsys.readouterr().out.splitlines() if l.startswith("val loss ")]
    model = GPT2.load(flags["-e"])
    val = DataLoader(flags["-j"], 2, 16, vocab_size=64)
    assert val.num_batches == 18
    losses = [float(model.forward(*val.next_batch())) for _ in range(18)]
    assert len(got) == 2 and abs(got[0] - sum(losses[:2]) / 2) < 2e-6, (got, losses)
    assert train_gpt2.main(tiny_run + ["-x", "1", "-v", "1", "-m", "-1", "-s", "0"]) == 0     # -m -1: all 18
    got = [float(l.split()[-1]) for l in capsys.readouterr().out.splitlines() if l.startswith("val loss ")]
    assert abs(got[0] - sum(losses) / 18) < 2e-6, (got, losses)
