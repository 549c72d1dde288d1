"""train_gpt2.py's estimate, refusal, ETA and non-finite finder, end to end."""
import os
import re
import subprocess
import sys

import pytest

from llmnp.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# runs train_gpt2.py and prints the process's peak RSS (VmHWM) to stderr at exit
MEASURED = """
import atexit, runpy, sys
from llmnp.memory import peak_rss_bytes
atexit.register(lambda: print(f"PEAK_RSS {peak_rss_bytes()}", file=sys.stderr))
sys.argv = ["train_gpt2.py"] + sys.argv[1:]
runpy.run_path("train_gpt2.py", run_name="__main__")
"""
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def train(*flags, measured=False):
    cmd = [sys.executable] + (["-c", MEASURED] if measured else [os.path.join(ROOT, "train_gpt2.py")])
    return subprocess.run(cmd + [str(f) for f in flags], capture_output=True, text=True, cwd=ROOT)


def predicted_peak(stdout):
    value, unit = re.search(r"predicted peak\s+([\d.]+) (\w+)", stdout).groups()
    return float(value) * UNITS[unit]


def test_estimate_prints_the_table_and_does_not_train(tiny_run, tmp_path):
    r = train(*tiny_run, "-x", 3, "-n", 1, "-nk", 2, "-o", tmp_path / "out", "--estimate")
    assert r.returncode == 0, r.stderr
    for word in ("parameters", "gradients", "AdamW m, v", "master weights", "activations", "logits",
                 "scratch", "predicted peak", "checkpoint on disk", "checkpoints of 3 steps", "ms/step"):
        assert word in r.stdout, word
    assert "step    1/" not in r.stdout
    assert not os.path.exists(tmp_path / "out" / "main.log")


def test_every_run_prints_the_estimate_first_and_an_eta(tiny_run):
    r = train(*tiny_run, "-x", 4, "-v", 2, "-s", 0)
    assert r.returncode == 0, r.stderr
    assert r.stdout.index("predicted peak") < r.stdout.index("step    1/")
    assert re.search(r"time: 2 of 4 steps in \S+, \S+ to go at [\d,]+ ms/step \(ETA \d\d:\d\d\)", r.stdout)


def test_a_batch_that_does_not_fit_is_refused_with_the_largest_that_does(tiny_run, monkeypatch, tmp_path):
    sys.path.insert(0, ROOT)
    import train_gpt2
    from llmnp import memory
    from llmnp.checkpoint import load_model
    config, _ = load_model(tiny_run[1])
    budget = memory.estimate(config, 3, 16).peak_bytes          # room for about -b 3 at -t 16, not 16
    monkeypatch.setattr(memory, "available_bytes", lambda device: budget - memory.RUNTIME_BYTES["cpu"])
    flags = list(tiny_run)
    flags[flags.index("-b") + 1] = "16"                       # 257 tokens a batch: the shards hold it
    with pytest.raises(UserError, match=r"-b \d+ is the largest that fits") as e:
        train_gpt2.main(flags + ["-x", "1"])
    assert 1 <= int(re.search(r"-b (\d+) is the largest", str(e.value)).group(1)) < 16


@pytest.mark.parametrize("flags", [("-b", 1, "-t", 64), ("-b", 4, "-t", 128, "-r", 0)])
def test_the_printed_peak_is_within_10_percent_of_the_measured_rss(flags):
    r = train("-e", "d6", *flags, "-x", 2, "-v", 2, "-m", 1, "-s", 0, measured=True)
    assert r.returncode == 0, r.stderr
    measured = int(re.search(r"PEAK_RSS (\d+)", r.stderr).group(1))
    assert 0.9 <= predicted_peak(r.stdout) / measured <= 1.1


@pytest.fixture
def overflowing_model(tiny_run, tmp_path):
    """tiny_run's model with a finite layer-1 bias (1e37) large enough that layer 1's attention scores
    overflow: the first step's loss is NaN."""
    from llmnp import GPT2
    model = GPT2.from_checkpoint(tiny_run[1])
    model.params["ln1b"][1] = 1e37
    path = tmp_path / "overflow.bin"
    model.save_checkpoint(str(path))
    return ["-e", str(path)] + tiny_run[2:]


@pytest.mark.parametrize("check", [[], ["--check-finite"]])
def test_a_nonfinite_loss_names_the_step_layer_and_tensor(overflowing_model, check):
    r = train(*overflowing_model, "-x", 2, "-v", 0, "-s", 0, *check)
    assert r.returncode == 1
    assert "step 1: layer 1 attention forward produced nan in atty" in r.stderr
