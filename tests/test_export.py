"""Export: an llm.c .bin (or a training folder) -> a Hugging Face GPT-2 folder -> imported back, with
exactly the same logits; the folder in HF's layout; bad input in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llmnp import GPT2, GPT2Config
from llmnp.errors import UserError
from llmnp.export import main as export
from test_generate import perturbed_model

CONFIG = GPT2Config(max_seq_len=12, vocab_size=50, padded_vocab_size=64, num_layers=2, num_heads=2, channels=16)


def logits(model, x):
    model.forward(x)
    return np.array(model.logits[..., :model.config.vocab_size])


def test_export_then_import_gives_identical_logits(tmp_path, capsys):
    model = perturbed_model(np.float32, CONFIG)
    model.save_checkpoint(str(tmp_path / "model.bin"))
    export([str(tmp_path / "model.bin"), str(tmp_path / "hf")])
    assert "2 layers, 16 channels, 2 heads, 50 tokens, 12 positions" in capsys.readouterr().out
    back = GPT2.from_pretrained(str(tmp_path / "hf"))
    for field in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels"):
        assert getattr(back.config, field) == getattr(CONFIG, field)
    x = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (3, 12)).astype(np.int32)
    np.testing.assert_array_equal(logits(back, x), logits(model, x))
    # and an HF folder exports to the same weights again
    export([str(tmp_path / "hf"), str(tmp_path / "hf2")])
    np.testing.assert_array_equal(logits(GPT2.from_pretrained(str(tmp_path / "hf2")), x), logits(model, x))


def test_folder_is_in_hugging_face_gpt2_layout(tmp_path):
    from safetensors.numpy import load_file
    model = perturbed_model(np.float32, CONFIG)
    run = tmp_path / "run"
    run.mkdir()
    model.save_checkpoint(str(run / "model_00000005.bin"))
    (run / "DONE_00000005").touch()
    export([str(run), str(tmp_path / "hf")])                    # a training folder: its latest checkpoint
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]) == (2, 2, 16, 50, 12)
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    names = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    C = CONFIG.channels
    assert names["wte.weight"].shape == (50, C)                          # padding dropped
    assert names["h.1.attn.c_attn.weight"].shape == (C, 3 * C)           # Conv1D: [in, out]
    np.testing.assert_array_equal(names["h.1.attn.c_attn.weight"], model.params["qkvw"][1].T)
    np.testing.assert_array_equal(names["h.0.mlp.c_proj.weight"], model.params["fcprojw"][0].T)
    assert not any(k.startswith("lm_head") for k in tensors)           # tied to wte


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        export([str(tmp_path / "missing.bin"), str(tmp_path / "hf")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a training checkpoint"):
        export([str(tmp_path / "empty"), str(tmp_path / "hf")])
    r = subprocess.run([sys.executable, "-m", "llmnp.export", str(tmp_path / "missing.bin"), str(tmp_path / "hf")],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
