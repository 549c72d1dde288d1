"""Faults a long run meets, on a real process: SIGKILL while checkpoints are written, SIGTERM from a
scheduler, Ctrl-C twice, a disk that fills up, a run that diverges. In every case the checkpoints
already complete stay complete and loadable, -y 1 resumes from the newest, the exit status says what
happened, and the last line says what was saved.
"""
import os
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llmnp.checkpoint import latest_checkpoint, load_model, load_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-u", os.path.join(ROOT, "train_gpt2.py")]


def start(flags, **kw):
    return subprocess.Popen(TRAIN + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)


def wait_for_step(p, step=None, lines=1):
    """Read the run's output up to the line of `step`, or up to its `lines`-th step line."""
    for line in p.stdout:
        if re.match(rf"step +{step if step is not None else '[0-9]+'}/", line):
            lines -= 1
            if step is not None or lines == 0:
                return
    raise AssertionError(f"the run ended early: {p.communicate()[1]}")


def complete_checkpoints(out):
    """Steps with DONE_ markers; each one's model and state files must load."""
    steps = sorted(int(f[5:]) for f in os.listdir(out) if re.fullmatch(r"DONE_\d{8}", f))
    for step in steps:
        config, flat = load_model(os.path.join(out, f"model_{step:08d}.bin"))
        assert np.isfinite(flat).all()
        state = load_state(os.path.join(out, f"state_{step:08d}_00000.bin"))
        assert state["step"] == step
    return steps


def leftovers(out):
    return [f for f in os.listdir(out) if ".tmp" in f]


def test_kill_while_writing_checkpoints_never_loses_a_complete_one(tiny_run, tmp_path):
    """SIGKILL (nothing can be handled) at moments spread over a run that checkpoints every step:
    every checkpoint marked complete loads, and -y 1 continues from the newest."""
    out = str(tmp_path / "run")
    flags = tiny_run + ["-v", "0", "-s", "0", "-n", "1", "-o", out]
    for delay in (0.0, 0.013, 0.029, 0.041):
        resume = ["-y", "1"] if os.path.exists(out) else []
        p = start(flags + ["-x", "100000"] + resume)
        wait_for_step(p, lines=1 if resume else 2)      # the second step starts after the first checkpoint
        time.sleep(delay)
        p.kill()
        p.wait()
        steps = complete_checkpoints(out)
        assert steps, "no complete checkpoint after the kill"
    p = subprocess.run(TRAIN + flags + ["-x", str(steps[-1] + 2), "-y", "1"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"resumed from {out} at step {steps[-1]}" in p.stdout


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_saves_and_exits_nonzero(tiny_run, tmp_path, signum, status):
    out = str(tmp_path / "run")
    p = start(tiny_run + ["-x", "100000", "-v", "0", "-s", "0", "-o", out])
    wait_for_step(p, 3)
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    name = signal.Signals(signum).name
    m = re.search(rf"stopped after step (\d+) \({name}\): the last complete checkpoint is step (\d+) in {out} "
                  rf"\(-y 1 resumes from it\)", err)
    assert m and m.group(1) == m.group(2), err
    assert complete_checkpoints(out)[-1] == int(m.group(1))
    assert "Traceback" not in err


def test_without_an_output_folder_a_signal_says_nothing_was_saved(tiny_run):
    p = start(tiny_run + ["-x", "100000", "-v", "0", "-s", "0"])
    wait_for_step(p, 2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert "nothing will be saved (no -o given)" in out
    assert re.search(r"stopped after step \d+ \(SIGINT\): nothing was saved \(no -o given\)", err), err


def test_a_second_signal_stops_at_once_and_says_what_was_not_saved(tiny_run, tmp_path):
    """Long steps (300 micro-batches) so that the second Ctrl-C lands inside the step the first one
    let finish."""
    out = str(tmp_path / "run")
    p = start(tiny_run + ["-d", "9600", "-x", "100000", "-v", "0", "-s", "0", "-n", "1", "-o", out])
    wait_for_step(p, 2)
    time.sleep(0.1)                                        # into step 3
    p.send_signal(signal.SIGINT)
    for line in p.stdout:
        if "SIGINT: finishing this step, then writing a checkpoint" in line:
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert re.search(r"SIGINT again: stopped at once; nothing saved after the checkpoint at step \d+", err), err
    assert "Traceback" not in err
    assert complete_checkpoints(out) and not leftovers(out)


def _small_disk(path, nbytes):
    """Make `path` a folder on a tmpfs of nbytes; None where mounting is not allowed."""
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={nbytes}", "tmpfs", path], capture_output=True)
    return r.returncode == 0


def test_a_full_disk_is_one_line_and_keeps_the_complete_checkpoints(tiny_run, tmp_path):
    """The disk fills up at the third checkpoint: one line naming the file and the cause, no temporary
    file left, the earlier checkpoints complete. A small tmpfs where mounting works (root), else a
    file-size limit (RLIMIT_FSIZE) that fails the same writes with EFBIG."""
    out = str(tmp_path / "disk")
    one = 37632 + 2 * (37632 - 1024) + 1024               # a model file + its state file (m, v)
    mounted = _small_disk(out, 2 * one + 16384 + one // 2)
    try:
        limit = None
        if not mounted:
            limit = 37632 + 1                                # a model file fits, the state file does not
        p = subprocess.run(TRAIN + tiny_run + ["-x", "12", "-n", "1", "-v", "0", "-s", "0", "-o", out],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           preexec_fn=None if mounted else lambda: _limit_file_size(limit))
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, p.stderr
        cause = "no space left on the device" if mounted else "the file is larger than this system allows"
        assert re.fullmatch(rf"error: cannot write {out}/(model|state)_\d{{8}}(_00000)?\.bin: {cause}", lines[0]), lines
        assert not leftovers(out)
        if mounted:
            assert complete_checkpoints(out)[-1] >= 1
        assert latest_checkpoint(out) is None or complete_checkpoints(out)
    finally:
        if mounted:
            subprocess.run(["umount", out])


def _limit_file_size(nbytes):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # the write fails with EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoints(tiny_run, tmp_path):
    """-l far too high: the first non-finite gradient norm stops the run (exit 1, one line naming the
    step) before the weights take it; no NaN model is written and -nk never deletes the last finite."""
    out = str(tmp_path / "run")
    p = subprocess.run(TRAIN + tiny_run + ["-l", "1e3", "-u", "10", "-x", "40", "-n", "2", "-nk", "2", "-v", "0",
                                           "-s", "0", "-o", out], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    m = re.fullmatch(r"error: (?:step \d+: .* produced \w+ in \w+; the|step (\d+): the) (?:gradient norm|loss) is "
                     r"(nan|inf)(?: \(running the step again with checks found [^)]*\))? \(training diverged; .*\): "
                     r"the last complete checkpoint is step (\d+) in .* \(-y 1 resumes from it\)", lines[0])
    assert m, lines
    steps = complete_checkpoints(out)
    assert steps[-1] == int(m.group(3)) and len(steps) == 2
    assert m.group(1) is None or int(m.group(1)) <= steps[-1] + 2
    assert not leftovers(out)
