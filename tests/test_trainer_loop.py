"""train_gpt2.train's loop, run in process on the tiny model of conftest's `tiny_run`: the stop request,
the checks for a NaN or inf loss, HellaSwag at the val cadence, the sample's streamed text, the -k
schedule, -sl/-sg, and the step line's ms, MFU and tok/s under a fake clock. A second process is faked
by a Distributed whose reductions stand in for an identical other process."""
import os
import re
import signal
import types

import numpy as np
import pytest

import llmnp.distributed
import train_gpt2
from llmnp import GPT2, nonfinite
from llmnp.data import DataLoader
from llmnp.errors import Interrupted, UserError, run_cli
from conftest import requires_gpu

STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| .*\| lr (\S+) \| (\d+\.\d\d) ms \| (\S+) bf16 MFU \| (\d+) tok/s$")
LOCATE_FAILS = "(running the step again with checks found no layer output that was not finite)"
DIVERGED = "(training diverged; a lower -l or more -u warmup usually helps)"


def flag(tiny_run, name):
    return dict(zip(tiny_run[::2], tiny_run[1::2]))[name]


def step_lines(out):
    return [m for m in map(STEP_LINE.match, out.splitlines()) if m]


class OtherProcess(llmnp.distributed.Distributed):
    """Process `rank` of 2 on the CPU, the other process holding the same numbers: a sum doubles, a mean
    and a max keep the value, gradients need no exchange. Records what train() hands it."""

    def __init__(self, device="cpu", launch=None, rank=0, other_stops_at=None):
        super().__init__(device, launch)
        self.rank, self.world_size = rank, 2
        self.other_stops_at, self.anys = other_stops_at, 0
        self.models, self.after_updates = [], []

    def _host_reduce(self, x, op):
        return x * 2 if op == "sum" else x

    def any(self, flag):
        self.anys += 1                           # once per pass of the loop: step start_step + anys - 1
        return bool(flag) or self.anys - 1 == self.other_stops_at

    def setup_zero(self, model, stage):
        self.models.append(model)

    def reduce_gradients(self, model):
        pass

    def after_update(self, model):
        self.after_updates.append(model)


@pytest.fixture
def two_processes(monkeypatch):
    """make(rank, **kw) -> the OtherProcess train() will use."""
    def make(rank, **kw):
        dist = OtherProcess(rank=rank, **kw)
        monkeypatch.setattr(llmnp.distributed, "Distributed", lambda device, launch: dist)
        return dist
    return make


# ------------------------------------------------------------------------------ stop requests
def signal_during_steps(monkeypatch, signals_at):
    """Send this process signals while a step's forward and backward run: {step number: [signums]}."""
    real = train_gpt2.forward_backward
    calls = []

    def forward_backward(*a):
        calls.append(None)
        for signum in signals_at.get(len(calls), []):
            os.kill(os.getpid(), signum)
        return real(*a)
    monkeypatch.setattr(train_gpt2, "forward_backward", forward_backward)


def test_sigterm_finishes_the_step_saves_and_exits_143(tiny_run, tmp_path, capsys, monkeypatch):
    """SIGTERM during step 2: step 2 completes and is logged, a checkpoint at step 2 is written, then
    the run stops with status 143 and a line naming the step, the signal and the checkpoint."""
    out = str(tmp_path / "run")
    signal_during_steps(monkeypatch, {2: [signal.SIGTERM]})
    with pytest.raises(SystemExit) as e:
        run_cli(train_gpt2.main, tiny_run + ["-x", "5", "-v", "0", "-s", "0", "-n", "0", "-o", out])
    assert e.value.code == 128 + signal.SIGTERM
    std = capsys.readouterr()
    assert [m.group(1) for m in step_lines(std.out)] == ["1", "2"]
    assert "\nSIGTERM: finishing this step, then writing a checkpoint; SIGTERM again stops at once\n" in std.out
    assert f"wrote checkpoint {out}/model_00000002.bin" in std.out
    assert std.err == (f"stopped after step 2 (SIGTERM): the last complete checkpoint is step 2 in {out} "
                       f"(-y 1 resumes from it)\n")


def test_a_stop_seen_by_another_process_stops_this_one_after_the_same_step(tiny_run, two_processes, capsys):
    """The other process got the signal before step 2 ended: this one (which got none) stops after step
    2 too, naming SIGINT, with exit status 130."""
    two_processes(0, other_stops_at=2)
    with pytest.raises(SystemExit) as e:
        run_cli(train_gpt2.main, tiny_run + ["-x", "5", "-v", "0", "-s", "0"])
    assert e.value.code == 128 + signal.SIGINT
    std = capsys.readouterr()
    assert [m.group(1) for m in step_lines(std.out)] == ["1", "2"]
    assert std.err == "stopped after step 2 (SIGINT): nothing was saved (no -o given)\n"


def test_a_second_signal_names_the_last_checkpoint_written(tiny_run, tmp_path, monkeypatch):
    """-n 1: the checkpoint of step 1 is written; two SIGTERMs during step 2 stop at once, and the line
    says nothing was saved after step 1's checkpoint."""
    out = str(tmp_path / "run")
    signal_during_steps(monkeypatch, {2: [signal.SIGTERM, signal.SIGTERM]})
    with pytest.raises(Interrupted) as e:
        train_gpt2.main(tiny_run + ["-x", "5", "-v", "0", "-s", "0", "-n", "1", "-o", out])
    assert e.value.signum == signal.SIGTERM
    assert str(e.value) == "SIGTERM again: stopped at once; nothing saved after the checkpoint at step 1"


def test_resuming_a_run_already_past_x_trains_no_step(tiny_run, tmp_path, capsys):
    """A checkpoint at step 3 resumed with -x 2: no step runs and nothing more is written."""
    out = str(tmp_path / "run")
    flags = tiny_run + ["-v", "0", "-s", "0", "-o", out]
    assert train_gpt2.main(flags + ["-x", "3"]) == 0
    capsys.readouterr()
    files = sorted(os.listdir(out))
    assert train_gpt2.main(flags + ["-x", "2", "-y", "1"]) == 0
    text = capsys.readouterr().out
    assert f"resumed from {out} at step 3" in text
    assert step_lines(text) == [] and "total average iteration time" not in text
    assert sorted(os.listdir(out)) == files


# ------------------------------------------------------------------------- NaN and inf values
@pytest.fixture
def located(monkeypatch):
    """nonfinite.locate, recorded: [(model, inputs, targets, grad_accum_steps, step)]; it runs for real."""
    real, calls = nonfinite.locate, []

    def locate(model, inputs, targets, grad_accum_steps=1, step=None):
        calls.append((model, inputs, targets, grad_accum_steps, step))
        return real(model, inputs, targets, grad_accum_steps, step=step)
    monkeypatch.setattr(nonfinite, "locate", locate)
    return calls


@pytest.fixture
def loaded(monkeypatch):
    """train_gpt2.load_model, recorded: the models it returned."""
    real, models = train_gpt2.load_model, []

    def load_model(*a, **k):
        models.append(real(*a, **k))
        return models[-1]
    monkeypatch.setattr(train_gpt2, "load_model", load_model)
    return models


def test_a_nan_val_loss_stops_before_step_1_naming_the_layer(tiny_run, tmp_path, located):
    """A model whose final LayerNorm gain (3e38) overflows float32: the step-0 val loss is NaN, and the
    run stops with one line naming step 0, the layer that the re-run of that val batch finds (as
    nonfinite.locate finds it on its own), and that nothing was saved."""
    model = GPT2.load(flag(tiny_run, "-e"))
    model.params["lnfw"][...] = 3e38
    path = str(tmp_path / "huge.bin")
    model.save_checkpoint(path)
    x, y = DataLoader(flag(tiny_run, "-j"), 2, 16, vocab_size=64).next_batch()
    with np.errstate(over="ignore", invalid="ignore"):
        where = nonfinite.locate(GPT2.load(path), [x], [y], 1, step=0)
    assert where.startswith("step 0: layer ")
    located.clear()
    out = str(tmp_path / "run")
    with pytest.raises(UserError) as e:
        train_gpt2.main(tiny_run + ["-e", path, "-x", "2", "-v", "1", "-m", "2", "-s", "0", "-o", out])
    assert str(e.value) == f"{where}; the val loss is nan {DIVERGED}: nothing was saved"
    assert len(located) == 1
    got_model, xs, ys, accum, step = located[0]
    assert isinstance(got_model, GPT2) and (accum, step) == (1, 0)
    assert [a.tolist() for a in xs] == [x.tolist()] and [a.tolist() for a in ys] == [y.tolist()]


@pytest.mark.parametrize("what, index, value", [("loss", 0, float("nan")), ("gradient norm", 1, float("inf"))])
def test_a_nonfinite_loss_or_norm_stops_before_the_update(tiny_run, tmp_path, monkeypatch, located, loaded,
                                                          what, index, value):
    """-d 64 (two micro-batches a step), -sh 0, -n 1: step 2's loss (or norm) made non-finite. The run stops
    with a line naming step 2, what and the value, after re-running step 2's two micro-batches (which
    are finite), and names step 1's checkpoint."""
    real = train_gpt2.forward_backward
    calls = []

    def forward_backward(*a):
        result = list(real(*a))
        calls.append(None)
        if len(calls) == 2:
            result[index] = value
        return tuple(result)
    monkeypatch.setattr(train_gpt2, "forward_backward", forward_backward)
    out = str(tmp_path / "run")
    with pytest.raises(UserError) as e:
        train_gpt2.main(tiny_run + ["-x", "4", "-d", "64", "-sh", "0", "-v", "0", "-s", "0", "-n", "1", "-o", out])
    assert str(e.value) == (f"step 2: the {what} is {value} {LOCATE_FAILS} {DIVERGED}: the last complete "
                            f"checkpoint is step 1 in {out} (-y 1 resumes from it)")
    train = DataLoader(flag(tiny_run, "-i"), 2, 16, vocab_size=64)
    batches = [train.next_batch() for _ in range(4)][2:]          # step 2's micro-batches: the file's 3rd, 4th
    assert len(located) == 1
    model, xs, ys, accum, step = located[0]
    assert model is loaded[0] and (accum, step) == (2, 2)
    assert [a.tolist() for a in xs] == [x.tolist() for x, _ in batches]
    assert [a.tolist() for a in ys] == [y.tolist() for _, y in batches]


# ------------------------------------------------------------------------------------ HellaSwag
def write_hellaswag(folder, n=6, seed=0):
    """n examples of the tiny model's 64-token vocabulary at dev/data/hellaswag/hellaswag_val.bin under
    folder, where -h 1 reads them; each needs at most 12 positions."""
    from llmnp.hellaswag import write_eval_file
    rng = np.random.default_rng(seed)
    examples = [{"label": int(rng.integers(4)), "ctx_tokens": rng.integers(0, 64, 5).tolist(),
                 "ending_tokens": [rng.integers(0, 64, int(rng.integers(1, 8))).tolist() for _ in range(4)]}
                for _ in range(n)]
    path = os.path.join(folder, "dev/data/hellaswag/hellaswag_val.bin")
    write_eval_file(path, examples)
    return path


def test_hellaswag_runs_at_the_val_cadence_after_step_0(tiny_run, tmp_path, monkeypatch, capsys):
    """-h 1 -v 1 -x 2, with -l 0 so that the weights stay the file's: llm.c's 'HellaSwag: c/t = f' line
    and main.log's 's:S eval:' after steps 1 and 2 (never at step 0), with the counts that
    llmnp.hellaswag.evaluate gives for the model file."""
    from llmnp.hellaswag import evaluate
    monkeypatch.chdir(tmp_path)
    path = write_hellaswag(str(tmp_path))
    correct, total = evaluate(GPT2.load(flag(tiny_run, "-e")), path, B=4)
    assert total == 6
    out = str(tmp_path / "run")
    assert train_gpt2.main(tiny_run + ["-h", "1", "-b", "4", "-x", "2", "-v", "1", "-m", "1", "-l", "0",
                                       "-s", "0", "-o", out]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("HellaSwag")]
    assert lines == [f"HellaSwag: {correct}/6 = {correct / 6:f}"] * 2
    with open(os.path.join(out, "main.log")) as f:
        evals = [l.strip() for l in f if " eval:" in l]
    assert evals == [f"s:1 eval:{correct / 6:.4f}", f"s:2 eval:{correct / 6:.4f}"]


@pytest.mark.parametrize("rank", [0, 1])
def test_hellaswag_of_one_process_scores_its_block_and_sums_over_processes(tiny_run, tmp_path, monkeypatch,
                                                                          capsys, two_processes, rank):
    """Process `rank` of 2, -b 4: each evaluation hands llmnp.hellaswag the training model, every
    example, B, this process's rank and the count, and the reduction that sums over processes; the
    line (process 0 only) gives the summed counts."""
    import llmnp.hellaswag
    monkeypatch.chdir(tmp_path)
    path = write_hellaswag(str(tmp_path))
    calls = []

    def evaluate_examples(model, examples, **kw):
        calls.append((model, examples, kw))
        return 5, 6
    monkeypatch.setattr(llmnp.hellaswag, "evaluate_examples", evaluate_examples)
    dist = two_processes(rank)
    assert train_gpt2.main(tiny_run + ["-h", "1", "-b", "4", "-x", "1", "-v", "1", "-m", "1", "-s", "0"]) == 0
    assert len(calls) == 1
    model, examples, kw = calls[0]
    assert model is dist.models[0]
    assert examples == llmnp.hellaswag.read_examples(path)
    assert kw == dict(B=4, rank=rank, world_size=2, allreduce=dist.sum)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("HellaSwag")]
    assert lines == (["HellaSwag: 5/6 = 0.833333"] if rank == 0 else [])


# ------------------------------------------------------------------------------------- sampling
class Terminal:
    """sys.stdout that records what print() wrote and how much of it was flushed."""

    def __init__(self):
        self.text, self.flushed = "", 0

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        self.flushed = len(self.text)


def test_the_sample_streams_each_tokens_text_as_it_is_made(tiny_run, monkeypatch):
    """-s 1 -g 8 -x 1 -l 0: between 'generating:\\n---' and '---' the text of the 7 tokens that
    sample_tokens draws from the model file (llm.c's sampler), in order, each token's text written and
    flushed before the next token is drawn. GPT-2's tokens 0-93 are the bytes '!' to '~' in order; a
    stand-in encoding with just those spares the test the full tokenizer's second of loading."""
    import llmnp.tokenizer
    model, want = GPT2.load(flag(tiny_run, "-e")), []
    model.allocate(2, 16)                        # as the run's -b 2 -t 16
    train_gpt2.sample_tokens(model, 8, want.append)
    assert len(want) == 7 and max(want) < 64
    encoding = types.SimpleNamespace(decode_single_token_bytes=lambda t: bytes([ord("!") + t]))
    monkeypatch.setattr(llmnp.tokenizer, "get_encoding", lambda: encoding)
    terminal, pending = Terminal(), []
    real = train_gpt2.sample_tokens

    def sample_tokens(model, gen_tokens, on_token):
        def streamed(tok):
            on_token(tok)
            pending.append(len(terminal.text) - terminal.flushed)
        return real(model, gen_tokens, streamed)
    monkeypatch.setattr(train_gpt2, "sample_tokens", sample_tokens)
    monkeypatch.setattr("sys.stdout", terminal)
    assert train_gpt2.main(tiny_run + ["-x", "1", "-s", "1", "-g", "8", "-v", "0", "-l", "0"]) == 0
    monkeypatch.undo()
    text = "".join(chr(ord("!") + t) for t in want)
    assert f"\ngenerating:\n---\n{text}\n---\n" in terminal.text
    assert pending == [0] * 7


# ------------------------------------------------------------------------- schedule and -sl/-sg
@pytest.mark.parametrize("schedule, steps, lrs", [
    ("constant", 4, ["1.00e-03"] * 4),
    ("linear", 4, ["1.00e-03", "7.50e-04", "5.00e-04", "2.50e-04"]),                 # 1 - step/4
    ("wsd", 10, ["1.00e-03"] * 9 + ["2.93e-04"]),          # decay from step 8: 1 - sqrt(1/2) at step 9
])
def test_the_schedule_flag_sets_each_steps_lr(tiny_run, capsys, schedule, steps, lrs):
    """-k with -l 1e-3 -q 0 -u 0: the lr of each step line, written out from each schedule's formula."""
    assert train_gpt2.main(tiny_run + ["-x", str(steps), "-k", schedule, "-l", "1e-3", "-q", "0", "-u", "0",
                                       "-v", "0", "-s", "0"]) == 0
    assert [m.group(3) for m in step_lines(capsys.readouterr().out)] == lrs


class ScriptedZ:
    """An outlier detector whose z-scores are given: the first update gets zs[0], and so on."""

    def __init__(self, zs):
        self.zs = list(zs)

    def update(self, x):
        return self.zs.pop(0)


NAN = float("nan")


@pytest.mark.parametrize("flags, zl, zn, skipped", [
    ([], 0.5, 0.5, None),                                        # -sl 0 -sg 0: never skip
    (["-sl", "0.5"], 0.75, NAN, "skipping update due to loss z-score of 0.750000"),
    (["-sl", "2"], 2.0, NAN, None),                               # at the threshold: not above it
    (["-sg", "0.5"], NAN, 0.75, "skipping update due to grad z-score of 0.750000"),
    (["-sg", "2"], NAN, 2.0, None),
    (["-sl", "3", "-sg", "3"], 2.5, 3.5, "skipping update due to grad z-score of 3.500000"),
], ids=["off", "loss-above", "loss-at", "norm-above", "norm-at", "norm-only-above"])
def test_outlier_flags_skip_an_update_only_above_their_z_score(tiny_run, capsys, monkeypatch, two_processes,
                                                               flags, zl, zn, skipped):
    """-sl / -sg (llm.c's): a step whose loss (or gradient norm) z-score is above the flag's value
    logs llm.c's line and takes no update; 0 turns the check off. Process 0 of 2: an update that is
    taken is followed by the gather of the updated model."""
    detectors = iter([ScriptedZ([zl]), ScriptedZ([zn])])           # train makes the loss one first
    monkeypatch.setattr(train_gpt2, "OutlierDetector", lambda: next(detectors))
    dist = two_processes(0)
    assert train_gpt2.main(tiny_run + ["-x", "1", "-v", "0", "-s", "0"] + flags) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("skipping")]
    assert lines == ([skipped] if skipped else [])
    assert dist.after_updates == ([] if skipped else dist.models)


# ------------------------------------------------------------------------------ the step line
def test_step_line_ms_mfu_and_tok_s_under_a_fake_clock(tiny_run, capsys, monkeypatch, two_processes):
    """Process 0 of 2, -b 2 -t 32 (T = the model's max_seq_len): 128 tokens a step over both processes.
    Steps of 0.5, 0.25, 0.125, 0.0625 s by a fake clock and a peak of 1e7 FLOP/s: ms is the step's time;
    MFU is llm.c's (6N + 6LCT) FLOPs a token x this process's 64 tokens / step time / peak; tok/s is the
    first step's own rate, then llm.c's bias-corrected EMA (0.95) of the rates from step 2 on."""
    durations = [0.5, 0.25, 0.125, 0.0625]
    reads = []

    def perf_counter():                          # two reads a step: its start and its end
        step, end = divmod(len(reads), 2)
        reads.append(None)
        return 100.0 * (step + 1) + (durations[step] if end else 0.0)
    monkeypatch.setattr(train_gpt2, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(train_gpt2, "device_peak_flops", lambda device: 1e7)
    two_processes(0)
    flags = [f for f in tiny_run]
    flags[flags.index("-t") + 1] = "32"
    assert train_gpt2.main(flags + ["-x", "4", "-v", "0", "-s", "0"]) == 0
    text = capsys.readouterr().out
    N, L, C, T = 9152, 2, 16, 32                 # 2048 wte + 512 wpe + 2 x 3280 per layer + 32 lnf
    flops_per_step = (6 * N + 6 * L * C * T) * 64
    ema, want = 0.0, []
    for k, dt in enumerate(durations):
        rate = 128 / dt
        if k > 0:
            ema = 0.95 * ema + 0.05 * rate
            rate = ema / (1 - 0.95 ** k)
        want.append((f"{1000 * dt:.2f}", f"{100 * flops_per_step / dt / 1e7:.1f}%", f"{rate:.0f}"))
    assert [w[2] for w in want] == ["256", "512", "775", "1221"]
    assert [(m.group(4), m.group(5), m.group(6)) for m in step_lines(text)] == want
    assert "total average iteration time: 145.833333 ms" in text       # steps 2-4: 437.5 ms / 3


@requires_gpu
def test_lg_logs_the_gpus_memory_after_every_nth_step(tiny_run, capsys):
    """--device cuda -lg 2 -x 5: the 'gpu: ' line follows the lines of steps 2 and 4, and no others."""
    assert train_gpt2.main(tiny_run + ["--device", "cuda", "-x", "5", "-lg", "2", "-v", "0", "-s", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    after = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("gpu: ")]
    assert [STEP_LINE.match(line).group(1) for line in after] == ["2", "4"]
