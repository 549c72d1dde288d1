"""train_gpt2's set-up, run in this process on tiny_run's model: the command line, what the flags reach
(the launcher, the process group, the loaders, the memory estimate), the checks made before step 1, and
what a run logs at its edges (a second process, an epoch, a resumed run, a stop request, a full disk under
main.log, a diverging model).

A world of two processes is faked on one: TwoProcesses is the real process group told it is rank r of 2,
whose partner holds the same numbers (a sum doubles, a maximum is the value), so train() runs unchanged.
"""
import errno
import inspect
import os
import re
import signal
import types

import numpy as np
import pytest

import llmnp.data
import llmnp.distributed
import train_gpt2
from llmnp import GPT2, GPT2Config, memory
from llmnp.data import write_shard
from llmnp.errors import Interrupted, UserError
from llmnp.hellaswag import write_eval_file

from test_bad_input_train import fails

QUIET = ["-v", "0", "-s", "0"]                 # no val loss, no sample: steps only
TINY = GPT2Config(max_seq_len=32, vocab_size=64, padded_vocab_size=128, num_layers=2, num_heads=2,  # tiny_run's
                  channels=16)


def flag(flags, name):
    return flags[flags.index(name) + 1]


def shard_tokens(path):
    """The token ids of an llm.c shard: a 256-int32 header, then uint16 tokens."""
    return np.fromfile(path, dtype="<u2", offset=256 * 4).astype(np.int64)


def error_line(main, argv, capsys):
    """The one line run_cli prints for a refused command line (exit status 1), without 'error: '."""
    status, err = fails(main, argv, capsys)
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


# ----------------------------------------------------------------------------- the command line
def test_main_reads_the_command_line(tiny_run, capsys, monkeypatch):
    """main() without arguments trains on the flags of sys.argv (the program name left out)."""
    monkeypatch.setattr("sys.argv", ["train_gpt2.py"] + tiny_run + ["-x", "1"] + QUIET)
    assert train_gpt2.main() == 0
    assert re.search(r"^step +1/1 \|", capsys.readouterr().out, re.M)


def test_a_diverging_run_stops_in_one_line_without_numpy_warnings(tiny_run, recwarn, tmp_path):
    """A model whose final LayerNorm gain (3e38) overflows float32, and whose logits are then NaN: the
    run stops with the val loss line alone; NumPy's overflow and invalid-value warnings are not shown."""
    model = GPT2.load(flag(tiny_run, "-e"))
    model.params["lnfw"][...] = 3e38
    path = str(tmp_path / "huge.bin")
    model.save_checkpoint(path)
    with pytest.raises(UserError, match="the val loss is nan"):
        train_gpt2.main(tiny_run + ["-e", path, "-x", "1", "-v", "1", "-m", "1", "-s", "0"])
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []


# ----------------------------------------------------------------------------- small functions
@pytest.mark.parametrize("norm, max_norm, scale", [
    (0.5, 1.0, 1.0),
    (1.0, 1.0, 1.0),           # at the limit: not clipped (llm.c: grad_norm > grad_clip)
    (4.0, 1.0, 0.25),
    (0.0, 0.0, 1.0),           # a zero gradient at a zero limit: left alone, no 0/0
])
def test_clip_scale_follows_llmc_rule(norm, max_norm, scale):
    """The gradients are scaled by max_norm / norm only when norm > max_norm (llm.c's grad_clip rule)."""
    assert train_gpt2.clip_scale(norm, max_norm) == scale


def test_check_finite_without_batches_names_only_the_value():
    """Given no micro-batches to run again, a non-finite value is reported as is: step and value, no
    re-run, whatever the weights hold."""
    model = GPT2(TINY, seed=1)
    model.params["wte"][0, 0] = np.nan
    with pytest.raises(UserError) as e:
        train_gpt2.check_finite(3, "loss", float("nan"), None, model=model)
    assert str(e.value) == ("step 3: the loss is nan (training diverged; a lower -l or more -u warmup usually "
                            "helps): nothing was saved (no -o given)")


# ------------------------------------------------------------------------- flags and the launcher
def test_o_naming_a_file_is_refused_with_the_flag_named(tiny_run, capsys, tmp_path):
    """-o pointing at a file: one line naming the -o folder and the path."""
    path = tmp_path / "afile"
    path.write_text("x")
    assert error_line(train_gpt2.main, tiny_run + ["-o", str(path)], capsys) == (
        f"-o folder {path} is a file, not a folder: give a folder path")


def test_launch_flags_reach_the_process_group(tiny_run, capsys, monkeypatch, tmp_path):
    """-pi/-pf/-pr/-pg (and -pn left out: 1 process, llm.c's default) reach the process group together
    with --device; on the CPU such a launch is then refused in one line."""
    seen = []
    real = llmnp.distributed.Distributed

    def recording(device, launch):
        seen.append((device, launch))
        return real(device, launch)
    monkeypatch.setattr(llmnp.distributed, "Distributed", recording)
    line = error_line(train_gpt2.main, tiny_run + ["-pi", "fs", "-pf", str(tmp_path), "-pg", "4"], capsys)
    assert line == ("-pi fs: processes started without mpiexec reduce through NCCL, which needs --device cuda; "
                    "on the CPU start them with mpiexec -n N")
    (device, launch), = seen
    assert device == "cpu"
    assert (launch.num_processes, launch.rank, launch.gpus_per_node, launch.method, launch.folder, launch.server) == (
        1, 0, 4, "fs", str(tmp_path), None)


def test_pr_without_pn_must_be_a_rank_of_one_process(tiny_run, capsys, tmp_path):
    """Without -pn there is one process, so -pr 1 names no process of the run."""
    assert error_line(train_gpt2.main, tiny_run + ["-pi", "fs", "-pf", str(tmp_path), "-pr", "1"], capsys) == (
        "-pr 1 is not a rank of -pn 1 processes (0..0)")


# -------------------------------------------------------------------- a faked world of two processes
def two_processes(rank):
    """A stand-in for llmnp.distributed.Distributed: this process is `rank` of 2, its partner holds the
    same values (so a sum is twice the value, a maximum the value itself)."""
    class TwoProcesses(llmnp.distributed.Distributed):
        def __init__(self, device="cpu", launch=None):
            super().__init__(device, launch)
            self.rank, self.world_size = rank, 2

        def _host_reduce(self, x, op):
            return x * 2 if op == "sum" else x

        def _allreduce(self, a):
            a *= 2

        def _reduce_scatter(self, full, out):
            out[...] = 2 * full[self.rank * out.size:(self.rank + 1) * out.size]

        def _allgather(self, a, shard):
            pass
    return TwoProcesses


def test_only_process_0_prints(tiny_run, capsys, monkeypatch):
    """Process 1 of 2 trains, evaluates and samples silently: only process 0 prints (llm.c)."""
    monkeypatch.setattr(llmnp.distributed, "Distributed", two_processes(1))
    assert train_gpt2.main(tiny_run + ["-x", "1", "-v", "1", "-m", "1", "-s", "1", "-g", "2"]) == 0
    assert capsys.readouterr().out == ""


def test_each_process_reads_its_own_slice(tiny_run, monkeypatch):
    """Process 1 of 2 reads the second B*T slice of every 2*B*T window, of the train and the val data
    (llm.c: rank r reads at offset r*B*T)."""
    first = {}

    class Recording(llmnp.data.DataLoader):
        def next_batch(self):
            x, y = super().next_batch()
            first.setdefault(self.pattern, (x.copy(), y.copy()))
            return x, y
    monkeypatch.setattr(llmnp.data, "DataLoader", Recording)
    monkeypatch.setattr(llmnp.distributed, "Distributed", two_processes(1))
    assert train_gpt2.main(tiny_run + ["-x", "1", "-v", "1", "-m", "1", "-s", "0", "-sh", "0"]) == 0
    B, T = int(flag(tiny_run, "-b")), int(flag(tiny_run, "-t"))
    for name in ("-i", "-j"):
        tokens = shard_tokens(flag(tiny_run, name))
        x, y = first[flag(tiny_run, name)]
        np.testing.assert_array_equal(x.ravel(), tokens[B * T:2 * B * T], err_msg=name)
        np.testing.assert_array_equal(y.ravel(), tokens[B * T + 1:2 * B * T + 1], err_msg=name)


@pytest.mark.parametrize("zero", ["0", "1"])
def test_zero_1_splits_adamw_state_only_when_asked(tiny_run, capsys, monkeypatch, zero):
    """-z 1 over 2 processes: each keeps m and v for half the parameters (said by process 0); -z 0: no
    sharding."""
    monkeypatch.setattr(llmnp.distributed, "Distributed", two_processes(0))
    assert train_gpt2.main(tiny_run + ["-x", "1", "-z", zero] + QUIET) == 0
    out = capsys.readouterr().out
    assert "2 processes (started by mpiexec), gradients reduced by MPI" in out
    n = GPT2(TINY, seed=1).num_parameters
    zero_lines = [l for l in out.splitlines() if l.startswith("ZeRO-1")]
    if zero == "0":
        assert zero_lines == []
    else:
        assert len(zero_lines) == 1 and zero_lines[0].startswith(
            f"ZeRO-1: each process keeps AdamW's m and v for {n // 2:,} of {n:,} parameters"), zero_lines


# ------------------------------------------------------------------------- data, steps, sequence length
def test_val_tokens_outside_the_vocabulary_are_refused(tiny_run, capsys, tmp_path):
    """A val shard holding a token id the model's vocabulary (64) lacks stops the run before step 1."""
    val = tmp_path / "val.bin"
    write_shard(str(val), np.r_[np.zeros(100, dtype=np.int64), 64])
    argv = tiny_run + ["-j", str(val), "-x", "1"] + QUIET
    assert error_line(train_gpt2.main, argv, capsys) == (
        f"{val} holds token id 64, not below the model's vocabulary size 64 (data made for another tokenizer?)")


@pytest.fixture
def short_train(tiny_run, tmp_path):
    """tiny_run's flags with a train shard of 150 tokens: 4 steps of B*T = 32 tokens."""
    path = tmp_path / "short.bin"
    write_shard(str(path), shard_tokens(flag(tiny_run, "-i"))[:150])
    return tiny_run + ["-i", str(path)]


def test_x_minus_1_trains_one_epoch(short_train, capsys):
    """-x -1: as many steps as whole steps fit the train data, floor(150 / 32) = 4 (llm.c)."""
    assert train_gpt2.main(short_train + ["-x", "-1"] + QUIET) == 0
    steps = re.findall(r"^step +(\d+)/(\d+) ", capsys.readouterr().out, re.M)
    assert steps == [(str(s), "4") for s in range(1, 5)]


def test_data_smaller_than_one_step_is_refused(short_train, capsys):
    """-x -1 with -d larger than the train data: one line instead of a run of no steps."""
    assert error_line(train_gpt2.main, short_train + ["-x", "-1", "-d", "160"], capsys) == (
        "the training data (150 tokens) is smaller than one step of 160 tokens: give -x or a smaller -d")


def test_t_may_equal_the_model_max_seq_len(tiny_run):
    """-t equal to the model's max_seq_len (32) is allowed: only a longer -t is refused."""
    assert train_gpt2.main(tiny_run + ["-t", "32", "-x", "1"] + QUIET) == 0


# ----------------------------------------------------------------------------------------- HellaSwag
def test_hellaswag_file_missing_is_said_and_skipped(tiny_run, capsys, monkeypatch, tmp_path):
    """-h 1 without the HellaSwag file: one line saying how to make it, and the run goes on."""
    monkeypatch.chdir(tmp_path)
    assert train_gpt2.main(tiny_run + ["-h", "1", "-b", "4", "-x", "1"] + QUIET) == 0
    assert ("-h 1: dev/data/hellaswag/hellaswag_val.bin not found, skipping HellaSwag "
            "(python data/hellaswag.py writes it)\n") in capsys.readouterr().out


def test_hellaswag_examples_longer_than_t_are_refused(tiny_run, capsys, monkeypatch, tmp_path):
    """-h 1 with an example of 10 context + 10 ending tokens (19 positions) and -t 16: refused before step 1."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("dev/data/hellaswag")
    write_eval_file("dev/data/hellaswag/hellaswag_val.bin",
                    [dict(label=0, ctx_tokens=list(range(1, 11)), ending_tokens=[[k] * 10 for k in range(4)])])
    assert error_line(train_gpt2.main, tiny_run + ["-h", "1", "-b", "4", "-x", "1"], capsys) == (
        "-h 1: HellaSwag examples need up to 19 positions, -t is 16: train with -t 19 or more, or without -h 1")


# ------------------------------------------------------------------------------------- memory estimate
@pytest.mark.parametrize("with_o, w", [(True, "1"), (False, "0")])
def test_estimate_is_made_for_the_run_s_flags(tiny_run, monkeypatch, tmp_path, with_o, w):
    """The memory table is computed for the flags given: dtype, -r, processes, -z, device, -n, -nk, -w, and
    the run's steps when -o saves checkpoints (none without -o)."""
    seen = []
    real = memory.estimate

    def recording(*a, **k):
        bound = inspect.signature(real).bind(*a, **k)
        bound.apply_defaults()
        seen.append(dict(bound.arguments))
        return real(*a, **k)
    monkeypatch.setattr(memory, "estimate", recording)
    flags = ["-x", "4", "-n", "2", "-nk", "1", "-r", "2", "-w", w] + (["-o", str(tmp_path / "run")] if with_o else [])
    assert train_gpt2.main(tiny_run + flags + QUIET) == 0
    args = seen[0]
    assert args["config"] == TINY and (args["B"], args["T"]) == (2, 16)
    assert {k: v for k, v in args.items() if k not in ("config", "B", "T")} == dict(
        dtype="fp32", recompute=2, processes=1, zero_stage=0, device="cpu", checkpoint_every=2,
        num_steps=4 if with_o else 0, checkpoints_kept=1, master_weights=w == "1")


@pytest.mark.parametrize("with_o", [True, False])
def test_estimate_prints_the_table_and_exits_0(tiny_run, capsys, tmp_path, with_o):
    """--estimate prints the table (with the checkpoints' disk when -o saves them) and exits 0 untrained."""
    flags = ["-x", "4", "-n", "2", "-nk", "1", "--estimate"] + (["-o", str(tmp_path / "run")] if with_o else [])
    assert train_gpt2.main(tiny_run + flags) == 0
    out = capsys.readouterr().out
    assert "predicted peak" in out and not re.search(r"^step ", out, re.M)
    disk = [l for l in out.splitlines() if l.startswith("checkpoints of")]
    if with_o:
        assert len(disk) == 1 and disk[0].startswith("checkpoints of 4 steps:") and disk[0].endswith(
            "(2 written, every 2 steps, -nk 1 keeps 1)"), disk
    else:
        assert disk == []


@pytest.mark.parametrize("spare", [0, -1])
def test_memory_check_counts_the_built_model_once(tiny_run, capsys, monkeypatch, spare):
    """The model is built before the memory check, so the check asks for the rest only: a machine with
    exactly that much free trains, one byte less is refused in one line."""
    est = memory.estimate(TINY, 2, 16, "fp32", 1, 1, 0, "cpu")
    rest = est.peak_bytes - est.runtime_bytes - est.model_bytes
    monkeypatch.setattr(memory, "available_bytes", lambda device: rest + spare)
    argv = tiny_run + ["-x", "1"] + QUIET
    if spare == 0:
        assert train_gpt2.main(argv) == 0
    else:
        assert error_line(train_gpt2.main, argv, capsys).startswith(f"this run needs {memory.human(rest)} more")


# ------------------------------------------------------------------------------------ the CPU device
def test_a_cpu_run_leaves_gpu_settings_alone(tiny_run, capsys):
    """On the CPU, -f 1 (TF32) is not applied to the process's GPU products and no CUDA compile is announced."""
    from llmnp.cuda import runtime
    runtime.set_tf32(False)
    assert train_gpt2.main(tiny_run + ["-x", "1", "-f", "1"] + QUIET) == 0
    assert runtime._fp32_compute[0] == runtime._CUBLAS_COMPUTE_32F
    assert "CUDA" not in capsys.readouterr().out


# -------------------------------------------------------------------------------- logging and stopping
def test_a_failing_main_log_write_is_one_line(tiny_run, monkeypatch, tmp_path):
    """A full disk under main.log mid-run: one line naming the file and the cause."""
    class FullDisk:
        def __init__(self, name):
            self.name = name

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass
    monkeypatch.setattr(train_gpt2, "open", lambda path, mode: FullDisk(path), raising=False)
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train_gpt2.main(tiny_run + ["-x", "1", "-o", str(out), "-v", "1", "-m", "1", "-s", "0"])
    assert str(e.value) == f"cannot write {out}/main.log: no space left on the device"


def test_a_resumed_run_does_not_repeat_the_resumed_step_s_val_loss(tiny_run, capsys, tmp_path):
    """-y 1 from the checkpoint at step 2 evaluates at steps 3 and 4, not again at 2 (llm.c): main.log's
    val losses are those of steps 0..4, once each."""
    out = str(tmp_path / "run")
    flags = tiny_run + ["-o", out, "-v", "1", "-m", "1", "-s", "0"]
    assert train_gpt2.main(flags + ["-x", "2"]) == 0
    capsys.readouterr()
    assert train_gpt2.main(flags + ["-x", "4", "-y", "1"]) == 0
    assert capsys.readouterr().out.count("val loss") == 2
    with open(os.path.join(out, "main.log")) as f:
        val_steps = [int(m.group(1)) for m in re.finditer(r"^s:(\d+) tel:", f.read(), re.M)]
    assert val_steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("with_o, then", [
    (True, "writing a checkpoint"),
    (False, "stopping; nothing will be saved (no -o given)"),
])
def test_a_stop_request_says_what_happens_next(tiny_run, capsys, monkeypatch, tmp_path, with_o, then):
    """Ctrl-C during a step: a line says the step finishes and then a checkpoint is written (with -o) or
    nothing is saved; the run then stops."""
    real = train_gpt2.forward_backward
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(train_gpt2, "forward_backward", interrupted)
    flags = ["-x", "3"] + QUIET + (["-o", str(tmp_path / "run")] if with_o else [])
    with pytest.raises(Interrupted):
        train_gpt2.main(tiny_run + flags)
    assert f"\nSIGINT: finishing this step, then {then}; SIGINT again stops at once\n" in capsys.readouterr().out


def test_tok_s_is_the_step_rate_at_a_steady_pace(tiny_run, capsys, monkeypatch):
    """Steps of exactly 1/1024 s each: every step line reads 32 * 1024 = 32768 tok/s (llm.c's bias-corrected
    EMA of a constant is that constant)."""
    clock = iter(np.arange(1000) / 1024)
    monkeypatch.setattr(train_gpt2, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    assert train_gpt2.main(tiny_run + ["-x", "3"] + QUIET) == 0
    rates = re.findall(r"^step .* \| 0\.98 ms \| n/a bf16 MFU \| (\d+) tok/s$", capsys.readouterr().out, re.M)
    assert rates == ["32768"] * 3


# ----------------------------------------------------------------------- flags that change nothing here
def test_flags_llmnp_ignores_say_so_only_when_given(tiny_run, capsys):
    """-ge and -w 0 (with fp32) are accepted for llm.c's command lines and say in one line that they change
    nothing; a run without them prints neither line, nor -y 1's line without -y 1."""
    def lines(*flags):
        assert train_gpt2.main(tiny_run + ["-x", "1"] + QUIET + list(flags)) == 0
        return capsys.readouterr().out.splitlines()
    plain = lines()
    assert not [line for line in plain if line.startswith(("-ge ", "-w 0:", "-y 1:"))]
    assert ("-ge 0: llmnp always applies the fc bias and GELU with the fc product (matmul_gelu_forward); "
            "the flag changes nothing") in lines("-ge", "0")
    assert "-w 0: fp32 parameters are their own master weights; the flag changes nothing" in lines("-w", "0")


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tiny_run, tmp_path, capsys):
    """-y 1 with an output folder holding no finished checkpoint: one line, then a run from step 0."""
    out = tmp_path / "out"
    assert train_gpt2.main(tiny_run + ["-x", "1", "-y", "1", "-o", str(out)] + QUIET) == 0
    text = capsys.readouterr().out
    assert f"-y 1: no complete checkpoint (DONE_* file) in {out}, starting from step 0" in text.splitlines()
    assert re.search(r"^step +1/1 \|", text, re.M)


# ------------------------------------------------------------------------------------ which data
def without(flags, *names):
    out = list(flags)
    for name in names:
        i = out.index(name)
        del out[i:i + 2]
    return out


def test_without_i_and_j_the_shipped_corpus_is_used(tiny_run, tmp_path, monkeypatch, capsys):
    """No -i, no -j and no llm.c Shakespeare shards under the working folder: the shipped corpus
    (llmnp.corpus.default_corpus) gives both."""
    import llmnp.corpus
    monkeypatch.chdir(tmp_path)                                    # no dev/data/... here
    asked = []
    monkeypatch.setattr(llmnp.corpus, "default_corpus",
                        lambda: asked.append(1) or (flag(tiny_run, "-i"), flag(tiny_run, "-j")))
    assert train_gpt2.main(without(tiny_run, "-i", "-j") + ["-x", "1"] + QUIET) == 0
    assert asked == [1]


def test_a_train_shard_without_a_val_shard_falls_back_to_llmcs_val_path(tiny_run, tmp_path, monkeypatch, capsys):
    """-i alone: the val shard is llm.c's default path (missing here: one line naming it); the shipped
    corpus is used only when neither -i nor -j is given."""
    import llmnp.corpus
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(llmnp.corpus, "default_corpus", lambda: (flag(tiny_run, "-i"), flag(tiny_run, "-j")))
    status, err = fails(train_gpt2.main, without(tiny_run, "-j") + ["-x", "1"] + QUIET, capsys)
    assert status == 1 and train_gpt2.LLMC_VAL in err and len(err.strip().splitlines()) == 1


def test_overfitting_one_batch_trains_on_the_val_shard(tiny_run, tmp_path, capsys):
    """-a 1 trains on the val shard's first batch: the train shard is not read (here it does not exist)."""
    flags = tiny_run[:]
    flags[flags.index("-i") + 1] = str(tmp_path / "missing_train.bin")
    assert train_gpt2.main(flags + ["-x", "2", "-a", "1"] + QUIET) == 0
    assert re.search(r"^step +2/2 \|", capsys.readouterr().out, re.M)


@pytest.mark.parametrize("d, accum", [("-1", 1), ("32", 1), ("64", 2)])
def test_total_batch_flag_sets_the_accumulation(tiny_run, capsys, d, accum):
    """-d -1: one micro-step of B*T tokens (B=2, T=16 here); -d N: N / (B*T) micro-steps."""
    assert train_gpt2.main(tiny_run + ["-x", "1", "-d", d] + QUIET) == 0
    assert f"grad_accum={accum} -> {32 * accum} tokens/step" in capsys.readouterr().out


def test_a_total_batch_of_one_token_is_refused(tiny_run, capsys):
    """-d 1 is a batch, not a flag value meaning 'one micro-step': it is not a multiple of B*T."""
    assert error_line(train_gpt2.main, tiny_run + ["-x", "1", "-d", "1"] + QUIET, capsys) == \
        "-d 1 is not a multiple of B*T*processes = 2*16*1 = 32"


def test_the_time_left_follows_each_val_loss_between_the_first_and_last_step(tiny_run, capsys):
    """After each val loss but the first (no step timed yet) and the last (nothing left), one line with
    the time so far and the time to go."""
    assert train_gpt2.main(tiny_run + ["-x", "3", "-v", "1", "-m", "1", "-s", "0"]) == 0
    times = [line for line in capsys.readouterr().out.splitlines() if line.startswith("time: ")]
    assert [line.split()[1:4] for line in times] == [["1", "of", "3"], ["2", "of", "3"]]
