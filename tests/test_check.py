"""python -m llmnp.check: passes on a debug state written by llmnp, fails loudly on corrupted ones."""
import subprocess
import sys

import numpy as np

from llmnp import GPT2, GPT2Config
from llmnp.check import is_llmc_124M_state, main, make_debug_state
from llmnp.checkpoint import read_debug_state, write_debug_state

TINY = GPT2Config.tiny(vocab_size=64, max_seq_len=16, num_layers=2, num_heads=2, channels=16)


def setup(tmp_path):
    model, state = str(tmp_path / "m.bin"), str(tmp_path / "s.bin")
    GPT2(TINY, seed=1).save_checkpoint(model)
    make_debug_state(model, state, B=3, T=8)
    return model, state


def test_check_passes_on_own_state(tmp_path, capsys):
    model, state = setup(tmp_path)
    assert main([model, state]) == 0
    out = capsys.readouterr().out.splitlines()
    tensor_lines = [line for line in out if "maxdiff" in line]
    assert len(tensor_lines) == 18 and all(" OK " in line for line in tensor_lines)   # logits, loss, 16 grads
    steps = [line for line in out if line.startswith("step ")]
    assert len(steps) == 10 and all(line.endswith("OK") and "NOT" not in line for line in steps)
    assert out[-1] == "overall okay: 1"


def test_check_fails_on_corrupted_state(tmp_path, capsys):
    model, state = setup(tmp_path)
    st = read_debug_state(state, TINY)
    grads = st["grads"].copy()
    grads[TINY.padded_vocab_size * TINY.channels + 5] += 0.5          # an element of wpe's gradient
    write_debug_state(state, st["inputs"], st["targets"], st["logits"], st["loss"], grads, TINY)
    assert main([model, state]) == 1
    out = capsys.readouterr().out
    assert "wpe        NOT OK  maxdiff = 5.000e-01" in out and "wte        OK" in out
    assert out.splitlines()[-1] == "overall okay: 0"

    logits = st["logits"].copy()
    logits[1, 2, 3] = np.nan
    write_debug_state(state, st["inputs"], st["targets"], logits, st["loss"] + 0.1, st["grads"], TINY)
    assert main([model, state]) == 1
    out = capsys.readouterr().out
    assert "logits     NOT OK" in out and "loss       NOT OK" in out

    GPT2(TINY, seed=2).save_checkpoint(model)                           # another model's state
    make_debug_state(model, state, B=3, T=8)
    GPT2(TINY, seed=1).save_checkpoint(model)
    assert main([model, state]) == 1


def test_check_cli_errors(tmp_path):
    model, state = setup(tmp_path)
    with open(state, "r+b") as f:
        f.truncate(2000)
    for args, message in [([model, state], "truncated"), ([str(tmp_path / "no.bin"), state], "model not found")]:
        r = subprocess.run([sys.executable, "-m", "llmnp.check", *args], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr
        assert r.stderr.startswith("error: ")


def test_llmc_reference_losses_only_for_llmc_state():
    d12 = GPT2Config.preset("d12")
    assert is_llmc_124M_state(d12, {"B": 4, "T": 64, "loss": 5.270007})
    assert not is_llmc_124M_state(d12, {"B": 4, "T": 64, "loss": 10.98})
    assert not is_llmc_124M_state(TINY, {"B": 4, "T": 64, "loss": 5.270007})
