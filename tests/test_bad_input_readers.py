"""Every reader of a user's file, given a bad one: one line naming the file and the cause, exit status 1
through the command that reads it, no traceback, no hang. One parametrized test per reader; each case
builds its bad file in tmp_path from a good one."""
import errno
import json
import os
import signal
import struct

import numpy as np
import pytest

import train_gpt2
from llmnp import check, generate, hellaswag
from llmnp.checkpoint import load_state, save_hf, save_model, save_state, write_debug_state
from llmnp.config import GPT2Config
from llmnp.data import DataLoader, write_shard
from llmnp.hellaswag import write_eval_file
from llmnp.errors import UserError, run_cli
from llmnp.params import num_parameters, parameter_specs
from llmnp.tokenizer import read_tokenizer_file

TINY = GPT2Config.tiny(vocab_size=50, max_seq_len=16, num_layers=2, num_heads=2, channels=8, pad_to=16)
HEADER = 1024


def header(*fields):
    return struct.pack("<256i", *fields, *([0] * (256 - len(fields))))


def set_field(raw, i, value):
    """raw with int32 header field i replaced."""
    return raw[:4 * i] + struct.pack("<i", value) + raw[4 * i + 4:]


def tiny_flat(seed=0):
    return np.random.default_rng(seed).standard_normal(num_parameters(TINY)).astype(np.float32) * 0.1


def offset_of(name, layer=0):
    """Index in the flat buffer of the first value of a parameter (of one layer)."""
    offset = 0
    for n, shape in parameter_specs(TINY):
        if n == name:
            return offset + layer * int(np.prod(shape[1:]))
        offset += int(np.prod(shape))
    raise KeyError(name)


# ------------------------------------------------------------------------ what every reader refuses
def common(kind, path, monkeypatch):
    """Make path missing / a folder / a named pipe / empty / unreadable; return the expected cause."""
    if kind == "missing":
        return "not found"
    if kind == "directory":
        os.mkdir(path)
        return "is a directory"
    if kind == "fifo":
        os.mkfifo(path)
        return "named pipe"
    if kind == "empty":
        open(path, "wb").close()
        return "truncated"
    if kind == "unreadable":
        open(path, "wb").close()
        os.chmod(path, 0)
        if os.geteuid() == 0:                    # root reads anything: make the open fail as it would
            real_open = os.open

            def refuse(p, *args, **kwargs):
                if os.fspath(p) == os.fspath(path):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))
                return real_open(p, *args, **kwargs)
            monkeypatch.setattr(os, "open", refuse)
        return "permission denied"
    raise ValueError(kind)


COMMON = ["missing", "directory", "fifo", "empty", "unreadable"]


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that blocks (a FIFO opened for reading waits for a writer) fails the test in 10 s."""
    def timeout(*_):
        raise TimeoutError("the reader blocked")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def cli_error(capsys, main, argv):
    """Run a command in-process; it must exit 1 with one `error: ...` line and no traceback."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    out = capsys.readouterr()
    assert e.value.code == 1, out
    assert "Traceback" not in out.err + out.out
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
    return out.err


def function_error(reader, *args, **kwargs):
    with pytest.raises(UserError) as e:
        reader(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------------------------- model file
def model_bytes(flat=None, version=3):
    flat = tiny_flat() if flat is None else flat
    c = TINY
    head = header(20240326, version, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels,
                  c.padded_vocab_size)
    if version == 5:
        from llmnp.checkpoint import float32_to_bf16_bits
        return head + float32_to_bf16_bits(flat).astype("<u2").tobytes()
    return head + flat.astype("<f4").tobytes()


def with_value(name, layer, value):
    flat = tiny_flat()
    flat[offset_of(name, layer) + 3] = value
    return flat


MODEL_CASES = {
    "header only": (model_bytes()[:HEADER], "truncated"),
    "wrong magic": (set_field(model_bytes(), 0, 20240520), "bad magic 20240520"),
    "wrong version": (set_field(model_bytes(), 1, 4), "version 4 is not supported"),
    "truncated": (model_bytes()[:-4], "truncated"),
    "extra bytes": (model_bytes() + b"\0" * 4, "shapes disagree with its header"),
    "zero layers": (set_field(model_bytes(), 4, 0), "corrupt header"),
    "negative channels": (set_field(model_bytes(), 6, -8), "corrupt header"),
    "heads": (set_field(model_bytes(), 5, 3), "multiple of num_heads"),
    "nan weight": (model_bytes(with_value("qkvw", 1, np.nan)), "parameter qkvw of layer 1 holds NaN"),
    "inf weight": (model_bytes(with_value("lnfb", 0, np.inf)), "parameter lnfb holds inf"),
    "bf16 nan": (model_bytes(with_value("wte", 0, np.nan), version=5), "parameter wte holds NaN"),
}


@pytest.mark.parametrize("case", COMMON + ["device"] + list(MODEL_CASES))
def test_model_file(case, tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "model.bin")
    if case == "device":
        path, cause = os.devnull, "character device"
    elif case in MODEL_CASES:
        raw, cause = MODEL_CASES[case]
        open(path, "wb").write(raw)
    else:
        cause = common(case, path, monkeypatch)
        if case == "directory":          # a folder is a model path too: a training folder or HF weights
            cause = "holds neither a training checkpoint"
    # check.py reads the model first (the state need not exist)
    err = cli_error(capsys, check.main, [path, str(tmp_path / "state.bin")])
    assert path in err and cause in err


@pytest.mark.parametrize("case", ["fifo", "nan weight"])
def test_generate_refuses_the_same_model_files(case, tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "model.bin")
    if case == "fifo":
        cause = common(case, path, monkeypatch)
    else:
        raw, cause = MODEL_CASES[case]
        open(path, "wb").write(raw)
    err = cli_error(capsys, generate.main, ["--model", path, "--device", "cpu", "-n", "2"])
    assert path in err and cause in err


# ------------------------------------------------------------------------------------- debug state
def debug_bytes(tmp_path):
    B, T = 2, 4
    logits = np.full((B, T, TINY.padded_vocab_size), 0.5, np.float32)
    path = str(tmp_path / "good_state.bin")
    write_debug_state(path, np.ones((B, T)), np.ones((B, T)), logits, 3.0, tiny_flat(1), TINY)
    return open(path, "rb").read()


DEBUG_CASES = {
    "header only": (lambda good: good[:HEADER], "truncated"),
    "wrong magic": (lambda good: set_field(good, 0, 20240326), "bad magic 20240326"),
    "wrong version": (lambda good: set_field(good, 1, 1), "version 1 is not supported"),
    "truncated": (lambda good: good[:-8], "truncated"),
    "extra bytes": (lambda good: good + b"\0" * 4, "disagree"),
    "zero batch": (lambda good: set_field(good, 2, 0), "corrupt debug state header (B=0"),
    "negative T": (lambda good: set_field(good, 3, -4), "corrupt debug state header (B=2 T=-4)"),
}


@pytest.mark.parametrize("case", COMMON + list(DEBUG_CASES))
def test_debug_state(case, tmp_path, capsys, monkeypatch):
    model = str(tmp_path / "model.bin")
    open(model, "wb").write(model_bytes())
    path = str(tmp_path / "state.bin")
    if case in DEBUG_CASES:
        make, cause = DEBUG_CASES[case]
        open(path, "wb").write(make(debug_bytes(tmp_path)))
    else:
        cause = common(case, path, monkeypatch)
    err = cli_error(capsys, check.main, [model, path])
    assert path in err and cause in err


# ---------------------------------------------------------------------------------- training state
P = 40                                        # AdamW state of a 40-parameter "model"


def state_bytes(tmp_path, m=None, master=True, shuffle=False, P=P):
    m = np.zeros(P, np.float32) if m is None else m
    loader = {"current_shard_idx": 0, "current_sample_idx": 1}
    if shuffle:
        from llmnp.data import MT19937
        loader.update(shard_indices=[1, 0], intra_shard_indices=[2, 0, 1], rng=MT19937(42).state_dict())
    path = str(tmp_path / "good.bin")
    save_state(path, 7, m, np.ones(P, np.float32), np.ones(P, np.float32) if master else None, loader,
               should_shuffle=shuffle)
    return open(path, "rb").read()


def m_with(value):
    m = np.zeros(P, np.float32)
    m[5] = value
    return m


STATE_CASES = {
    "header only": (lambda t: state_bytes(t)[:HEADER], "truncated"),
    "wrong magic": (lambda t: set_field(state_bytes(t), 0, 20240326), "bad magic 20240326"),
    "wrong version": (lambda t: set_field(state_bytes(t), 1, 2), "version 2 is not supported"),
    "truncated": (lambda t: state_bytes(t)[:-4], "truncated training state"),
    "extra bytes": (lambda t: state_bytes(t) + b"\0" * 8, "unexpected bytes after the optimizer state"),
    "other model": (lambda t: state_bytes(t, P=4 * P), f"for {4 * P} parameters, this run's model has {P}"),
    "no processes": (lambda t: set_field(state_bytes(t), 2, 0), "corrupt training-state header"),
    "rank beyond": (lambda t: set_field(state_bytes(t), 3, 1), "corrupt training-state header"),
    "nan m": (lambda t: state_bytes(t, m_with(np.nan)), "AdamW m holds NaN (first at parameter 5"),
    "inf m": (lambda t: state_bytes(t, m_with(-np.inf)), "AdamW m holds inf"),
    "loader state cut": (lambda t: state_bytes(t, shuffle=True)[:-1], "data-loader state"),
    "loader order": (lambda t: state_bytes(t, shuffle=True).replace(struct.pack("<3i", 2, 0, 1),
                                                                     struct.pack("<3i", 2, 2, 1)),
                     "data-loader state"),
    # the shard order [1, 0] made [1, 1] (the sample order still a permutation): each order is checked
    "shard order": (lambda t: state_bytes(t, shuffle=True).replace(struct.pack("<Q2i", 2, 1, 0),
                                                                    struct.pack("<Q2i", 2, 1, 1)),
                    "data-loader state"),
    # u64 counts far past the file's end, up to the top bit (which NumPy cannot even take as a count)
    **{f"shard count {n}": (lambda t, n=n: state_bytes(t, shuffle=True).replace(struct.pack("<Q2i", 2, 1, 0),
                                                                               struct.pack("<Q2i", n, 1, 0)),
                            "data-loader state") for n in (2**40, 2**63, 2**64 - 1)},
    **{f"sample count {n}": (lambda t, n=n: state_bytes(t, shuffle=True).replace(struct.pack("<Q3i", 3, 2, 0, 1),
                                                                                struct.pack("<Q3i", n, 2, 0, 1)),
                             "data-loader state") for n in (2**63, 2**64 - 1)},
}


@pytest.mark.parametrize("case", COMMON + list(STATE_CASES))
def test_training_state(case, tmp_path, monkeypatch):
    path = str(tmp_path / "state_00000007_00000.bin")
    if case in STATE_CASES:
        make, cause = STATE_CASES[case]
        open(path, "wb").write(make(tmp_path))
    else:
        cause = common(case, path, monkeypatch)
    message = function_error(load_state, path, num_parameters=P)
    assert path in message and cause in message


def test_training_state_master_weights_nan(tmp_path):
    path = str(tmp_path / "state.bin")
    raw = state_bytes(tmp_path)
    open(path, "wb").write(raw[:-4] + struct.pack("<f", np.nan))       # the last master weight
    message = function_error(load_state, path, num_parameters=P)
    assert path in message and f"master weights holds NaN (first at parameter {P - 1}" in message


# ------------------------------------------------------------------------------------------ shards
def shard_bytes(tokens=None):
    tokens = np.arange(40) % TINY.vocab_size if tokens is None else np.asarray(tokens)
    return header(20240520, 1, tokens.size) + tokens.astype("<u2").tobytes()


SHARD_CASES = {
    "header only": (shard_bytes()[:HEADER], "the header says 40 tokens"),
    "wrong magic": (set_field(shard_bytes(), 0, 20240801), "bad magic 20240801"),
    "wrong version": (set_field(shard_bytes(), 1, 7), "version 7 is not supported"),
    "truncated": (shard_bytes()[:-2], "truncated"),
    "extra bytes": (shard_bytes() + b"\0\0", "2 bytes after the 40 tokens"),
    "zero tokens": (set_field(shard_bytes(), 2, 0), "the header says 0 tokens"),
    "negative tokens": (set_field(shard_bytes(), 2, -40), "the header says -40 tokens"),
    "too short": (shard_bytes(range(10)), "one batch needs"),
    "token beyond V": (shard_bytes([1] * 39 + [TINY.vocab_size]), f"token id {TINY.vocab_size}"),
}


@pytest.mark.parametrize("case", COMMON + list(SHARD_CASES))
def test_token_shard(case, tmp_path, capsys, monkeypatch):
    model = str(tmp_path / "model.bin")
    save_model(model, TINY, tiny_flat())
    val = str(tmp_path / "val.bin")
    open(val, "wb").write(shard_bytes())
    path = str(tmp_path / "train.bin")
    if case in SHARD_CASES:
        raw, cause = SHARD_CASES[case]
        open(path, "wb").write(raw)
    else:
        cause = common(case, path, monkeypatch)
        if case == "missing":
            cause = "no files match"
    err = cli_error(capsys, train_gpt2.main, ["-e", model, "-i", path, "-j", val, "-b", "2", "-t", "8",
                                              "-x", "1", "-s", "1000", "-v", "1000"])
    assert path in err and cause in err


def test_a_shard_changed_during_the_run(tmp_path):
    path = str(tmp_path / "a.bin")
    write_shard(path, np.arange(40) % TINY.vocab_size)
    loader = DataLoader(path, 2, 8, vocab_size=TINY.vocab_size)
    os.remove(path)
    os.mkfifo(path)
    message = function_error(loader._advance)
    assert path in message and "named pipe" in message


# --------------------------------------------------------------------------------- tokenizer file
def tokenizer_bytes(tokens=(b"a", b"bc", b"\xff"), eot=2, n=None, version=2):
    n = len(tokens) if n is None else n
    return header(20240328, version, n, eot) + b"".join(bytes([len(t)]) + t for t in tokens)


TOKENIZER_CASES = {
    "header only": (tokenizer_bytes()[:HEADER], "truncated or corrupt tokenizer file at token 0 of 3"),
    "wrong magic": (set_field(tokenizer_bytes(), 0, 20240520), "bad magic 20240520"),
    "wrong version": (set_field(tokenizer_bytes(), 1, 3), "version 3 is not supported"),
    "negative n": (tokenizer_bytes(n=-1), "the header says -1 tokens"),
    "zero n": (tokenizer_bytes(n=0), "the header says 0 tokens"),
    "eot beyond": (tokenizer_bytes(eot=3), "EOT id 3 is not one of its 3 tokens"),
    "negative eot": (tokenizer_bytes(eot=-1), "EOT id -1 is not one of its 3 tokens"),
    "truncated": (tokenizer_bytes()[:-1], "at token 2 of 3"),
    "empty token": (tokenizer_bytes((b"a", b"", b"c")), "at token 1 of 3"),
    "extra bytes": (tokenizer_bytes() + b"\x01z", "2 bytes after the 3 tokens"),
}


@pytest.mark.parametrize("case", COMMON + list(TOKENIZER_CASES))
def test_tokenizer_file(case, tmp_path, monkeypatch):
    path = str(tmp_path / "tok.bin")
    if case in TOKENIZER_CASES:
        raw, cause = TOKENIZER_CASES[case]
        open(path, "wb").write(raw)
    else:
        cause = common(case, path, monkeypatch)
    message = function_error(read_tokenizer_file, path)
    assert path in message and cause in message


# ------------------------------------------------------------------------------------- HellaSwag
def hellaswag_bytes(tmp_path):
    examples = [{"label": i % 4, "ctx_tokens": [1, 2, 3], "ending_tokens": [[4], [5, 6], [7], [8]]}
                for i in range(3)]
    path = str(tmp_path / "good_hs.bin")
    write_eval_file(path, examples)
    return open(path, "rb").read()


def hs_patch(raw, u16_index, value):
    """raw with the uint16 at u16_index of the payload replaced."""
    at = HEADER + 2 * u16_index
    return raw[:at] + struct.pack("<H", value) + raw[at + 2:]


HELLASWAG_CASES = {
    "header only": (lambda g: g[:HEADER], "the file ends early"),
    "wrong magic": (lambda g: set_field(g, 0, 20240520), "bad magic 20240520"),
    "wrong version": (lambda g: set_field(g, 1, 2), "version 2 is not supported"),
    "zero examples": (lambda g: set_field(g, 2, 0), "the header says 0 examples"),
    "negative examples": (lambda g: set_field(g, 2, -3), "the header says -3 examples"),
    "truncated": (lambda g: g[:-2], "example 2"),
    "odd size": (lambda g: g + b"\0", "odd payload size"),
    "extra bytes": (lambda g: g + b"\0\0", "2 bytes after the 3 examples"),
    "bad label": (lambda g: hs_patch(g, 3, 4), "label 4 is not an ending index"),
    "bad marker": (lambda g: hs_patch(g, 0, 7), "expected the start marker 65535, found 7"),
}


@pytest.mark.parametrize("case", COMMON + list(HELLASWAG_CASES))
def test_hellaswag_file(case, tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "hs.bin")
    if case in HELLASWAG_CASES:
        make, cause = HELLASWAG_CASES[case]
        open(path, "wb").write(make(hellaswag_bytes(tmp_path)))
    else:
        cause = common(case, path, monkeypatch)
    # the file is read before the model is loaded: the model need not exist
    err = cli_error(capsys, hellaswag.main, ["--model", str(tmp_path / "m.bin"), "--data", path])
    assert path in err and cause in err


# ------------------------------------------------------------------------------- HF folder / safetensors
def st_split(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_join(head, data):
    blob = json.dumps(head).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def st_edit(edit):
    """A safetensors transform: edit(header, data) changes the header in place, returns the data."""
    def apply(raw):
        head, data = st_split(raw)
        return st_join(head, edit(head, data))
    return apply


def entry(head, short):
    return head["transformer." + short]


def shift(short, by):
    def edit(head, data):
        entry(head, short)["data_offsets"] = [o + by for o in entry(head, short)["data_offsets"]]
        return data
    return edit


def setting(short, key, value):
    def edit(head, data):
        if value is None:
            del entry(head, short)[key]
        else:
            entry(head, short)[key] = value
        return data
    return edit


def last_tensor(head):
    return max((k for k in head if k != "__metadata__"), key=lambda k: head[k]["data_offsets"][1])[len("transformer."):]


def nan_in(short):
    def edit(head, data):
        begin = entry(head, short)["data_offsets"][0]
        return data[:begin] + struct.pack("<f", np.nan) + data[begin + 4:]
    return edit


def config_json(text):
    return ("config.json", lambda raw: text.encode())


WEIGHTS = "model.safetensors"
HF_CASES = {
    "config not json": (*config_json("{'n_head': 2"), "config.json: not valid JSON"),
    "config a list": (*config_json("[1, 2]"), "config.json: holds a JSON list"),
    "config field a string": (*config_json('{"n_head": "2"}'), "n_head is '2', not a positive integer"),
    "config field a float": (*config_json('{"n_layer": 2.0}'), "n_layer is 2.0, not a positive integer"),
    "config heads": (*config_json('{"n_head": 3}'), "n_head=3 does not divide n_embd=8"),
    "config sizes": (*config_json('{"n_layer": 3}'), "config.json says V, maxT, L, C"),
    "config not utf-8": ("config.json", lambda raw: b"\xff\xfe{", "config.json: not valid JSON (not UTF-8"),
    "not safetensors": (WEIGHTS, lambda raw: b"\x05\0\0\0\0\0\0\0hello", "not a safetensors file"),
    "header beyond file": (WEIGHTS, lambda raw: struct.pack("<Q", 10**6) + raw[8:100], "not a safetensors file"),
    "header a list": (WEIGHTS, lambda raw: st_join([1], b""), "not a safetensors file"),
    "entry not an object": (WEIGHTS, st_edit(lambda h, d: h.update({"transformer.wpe.weight": [1]}) or d),
                            "tensor transformer.wpe.weight: its entry is list"),
    "no data_offsets": (WEIGHTS, st_edit(setting("wpe.weight", "data_offsets", None)), "lacks data_offsets"),
    "data_offsets one number": (WEIGHTS, st_edit(setting("wpe.weight", "data_offsets", [4])),
                                "data_offsets [4] is not [begin, end]"),
    "data_offsets reversed": (WEIGHTS, st_edit(setting("wpe.weight", "data_offsets", [8, 4])),
                              "data_offsets [8, 4] is not [begin, end]"),
    "no shape": (WEIGHTS, st_edit(setting("wpe.weight", "shape", None)), "lacks shape"),
    "shape of strings": (WEIGHTS, st_edit(setting("wpe.weight", "shape", ["16", "8"])),
                         "is not a list of non-negative integers"),
    "shape and offsets disagree": (WEIGHTS, st_edit(setting("wpe.weight", "shape", [16, 9])),
                                   "takes 576 bytes, its data_offsets span 512"),
    "no dtype": (WEIGHTS, st_edit(setting("wpe.weight", "dtype", None)), "lacks dtype"),
    "integer dtype": (WEIGHTS, st_edit(setting("wpe.weight", "dtype", "I32")), "has dtype 'I32', not a float"),
    "dtype a list": (WEIGHTS, st_edit(setting("wpe.weight", "dtype", ["F32"])), "not a float type"),
    "1-D wte": (WEIGHTS, st_edit(setting("wte.weight", "shape", [50 * 8])),
                "wte.weight has shape (400,), expected 2-D"),
    "3-D weight": (WEIGHTS, st_edit(setting("h.0.mlp.c_fc.weight", "shape", [8, 32, 1])),
                   "h.0.mlp.c_fc.weight has shape (8, 32, 1), expected (8, 32)"),
    "trailing bytes": (WEIGHTS, lambda raw: raw + b"\0" * 8, "8 bytes after the last tensor"),
    "overlapping offsets": (WEIGHTS, st_edit(shift("wpe.weight", -4)), "overlap"),
    "out of file": (WEIGHTS, st_edit(lambda h, d: shift(last_tensor(h), 8)(h, d)), "lies outside the file"),
    "truncated": (WEIGHTS, lambda raw: raw[:-10], "lies outside the file"),
    "nan weight": (WEIGHTS, st_edit(nan_in("h.1.attn.c_attn.weight")), "h.1.attn.c_attn.weight holds NaN"),
    "weights fifo": (WEIGHTS, "fifo", "named pipe"),
    "config fifo": ("config.json", "fifo", "named pipe"),
    "config a folder": ("config.json", "directory", "is a directory"),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_folder(case, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "hf"
    save_hf(str(folder), TINY, tiny_flat())
    name, make, cause = HF_CASES[case]
    path = str(folder / name)
    if isinstance(make, str):
        os.remove(path)
        common(make, path, monkeypatch)
    else:
        raw = make(open(path, "rb").read())
        open(path, "wb").write(raw)
    err = cli_error(capsys, generate.main, ["--model", str(folder), "--device", "cpu", "-n", "2"])
    assert path in err and cause in err
