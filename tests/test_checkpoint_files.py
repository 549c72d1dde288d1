"""The one-line messages a user sees for checkpoint, safetensors and HF files that cannot be read or
written (missing, a folder where a file belongs, a file where a folder belongs, changed while read,
corrupt headers), and training-state files at the edges of their data-loader section (thousands of
shards or samples, an empty shard order, a count with its top bit set), every file built byte by
byte here with struct from the formats in llmnp/checkpoint.py's docstring."""
import json
import os
import struct

import numpy as np
import pytest

import llmnp.checkpoint as checkpoint
from llmnp.checkpoint import load_hf, load_model, load_state, read_debug_state, read_safetensors, save_hf
from llmnp.errors import UserError
from llmnp.params import num_parameters
from test_checkpoint import (TINY, gpt2_tensors, header, hf_folder, random_flat, shuffled_state_file,
                             struct_model_file)

HEADER = 1024


def one_line(excinfo):
    """The message of a raised UserError, checked to be one line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def shrink_after_measuring(monkeypatch, path, keep):
    """Make the reader see the file change while it reads: its size is measured on the open file as it
    was, then the file is cut to `keep` bytes before the data is read."""
    real = checkpoint.file_size

    def measure_then_cut(f):
        size = real(f)
        os.truncate(path, keep)
        return size
    monkeypatch.setattr(checkpoint, "file_size", measure_then_cut)


def st_file(path, header_entries, data):
    """A safetensors file from a header dict (in the given key order) and raw data bytes."""
    blob = json.dumps(header_entries).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


# ------------------------------------------------------------------------------ files that cannot be read
@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_safetensors_path_missing_or_a_folder_named_in_one_line(tmp_path, kind):
    """read_safetensors on a path that does not exist / is a folder: one line naming it a safetensors file."""
    path = tmp_path / "model.safetensors"
    if kind == "folder":
        path.mkdir()
    expected = {"missing": f"safetensors file not found: {path}",
                "folder": f"safetensors file {path} is a directory, not a file"}[kind]
    with pytest.raises(UserError) as e:
        read_safetensors(path)
    assert one_line(e) == expected


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_hf_config_json_a_folder_or_a_dangling_link_named_in_one_line(tmp_path, kind):
    """An HF folder whose config.json is a folder, or a link to nothing: load_hf says which file, as the
    HF config file, in one line (the weights themselves are fine)."""
    folder = hf_folder(tmp_path / "hf", gpt2_tensors(5, 3, 8, 1))
    cfg = folder / "config.json"
    if kind == "folder":
        cfg.mkdir()
        expected = f"HF config file {cfg} is a directory, not a file"
    else:
        os.symlink(tmp_path / "nowhere.json", cfg)
        expected = f"HF config file not found: {cfg}"
    with pytest.raises(UserError) as e:
        load_hf(str(folder))
    assert one_line(e) == expected


@pytest.mark.parametrize("version, itemsize", [(3, 4), (5, 2)])
def test_model_file_cut_while_read_names_the_file(tmp_path, monkeypatch, version, itemsize):
    """A float32 (version 3) or bfloat16 (version 5) model file cut to 40 bytes of parameters after its
    size was checked: one line naming the file and how many parameters arrived."""
    path = tmp_path / "model.bin"
    path.write_bytes(struct_model_file(TINY, random_flat(TINY), version))
    shrink_after_measuring(monkeypatch, path, HEADER + 40)
    with pytest.raises(UserError) as e:
        load_model(path)
    expected = f"{path}: the file ended after {40 // itemsize} of {num_parameters(TINY):,} values (changed while read?)"
    assert one_line(e) == expected


def test_debug_state_cut_while_read_names_the_file(tmp_path, monkeypatch):
    """A debug state (B=1, T=2, the tiny model) that is cut to 100 bytes of payload after its size was
    checked: one line naming the file and how many of the payload's bytes arrived."""
    B, T, V, P = 1, 2, TINY.vocab_size, num_parameters(TINY)
    payload = 8 * B * T + 4 * B * T * V + 4 + 4 * P
    path = tmp_path / "debug.bin"
    path.write_bytes(header(20240327, 2, B, T) + bytes(payload))
    shrink_after_measuring(monkeypatch, path, HEADER + 100)
    with pytest.raises(UserError) as e:
        read_debug_state(path, TINY)
    assert one_line(e) == f"{path}: the file ended after 100 of {payload:,} values (changed while read?)"


def test_safetensors_cut_while_read_names_the_file(tmp_path, monkeypatch):
    """A safetensors file with one F32 tensor of 4 values, cut after its header and 2 of the values once
    its size was taken: one line naming the file and the count read."""
    path = st_file(tmp_path / "t.safetensors",
                   {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, struct.pack("<4f", 1, 2, 3, 4))
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    shrink_after_measuring(monkeypatch, path, 8 + n + 8)
    with pytest.raises(UserError) as e:
        read_safetensors(path)
    assert one_line(e) == f"{path}: the file ended after 2 of 4 values (changed while read?)"


# ------------------------------------------------------------------------------ safetensors headers
@pytest.mark.parametrize("entry, missing", [({"dtype": "F32"}, "shape, data_offsets"),
                                            ({}, "dtype, shape, data_offsets"),
                                            ({"shape": [1]}, "dtype, data_offsets")])
def test_safetensors_entry_lacking_fields_lists_them(tmp_path, entry, missing):
    """A header entry without some of dtype / shape / data_offsets: the message lists the missing ones
    in that order, separated by ', '."""
    path = st_file(tmp_path / "t.safetensors", {"x": entry}, b"")
    with pytest.raises(UserError) as e:
        read_safetensors(path)
    assert one_line(e) == f"{path}: tensor x: its entry lacks {missing} (a corrupt safetensors header)"


def test_safetensors_tensors_sharing_bytes_named_in_header_order(tmp_path):
    """Two tensors over the same 4 bytes (a: F32 [1], b: BF16 [2], both data_offsets [0, 4]): tensors
    are placed by their offsets alone, so of two with equal offsets the one listed first in the header
    comes first, whatever their dtypes or names, and the overlap names a, then b."""
    path = st_file(tmp_path / "t.safetensors",
                   {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, struct.pack("<f", 1.0))
    with pytest.raises(UserError) as e:
        read_safetensors(path)
    assert one_line(e) == f"{path}: tensors a and b overlap (data bytes 0 to 4)"


# ------------------------------------------------------------------------------ HF GPT-2 weights
def test_hf_lm_head_with_nan_named_with_its_file(tmp_path):
    """A tied lm_head.weight holding NaN (the other tensors finite): one line naming the weights file and
    the tensor."""
    t = gpt2_tensors(5, 3, 8, 1)
    head = t["wte.weight"].copy()
    head[2, 3] = np.nan
    folder = hf_folder(tmp_path / "hf", {**t, "lm_head.weight": head}, {"n_head": 1}, prefix="")
    weights = os.path.join(str(folder), "model.safetensors")
    with pytest.raises(UserError) as e:
        load_hf(str(folder))
    assert one_line(e) == f"{weights}: lm_head.weight holds NaN: the weights are corrupt or from a diverged run"


def test_hf_weights_without_layers_named_with_their_file(tmp_path):
    """Embeddings and a final layernorm but no h.<l>.* tensors (0 layers, C=64 so 1 head): refused in one
    line that names the weights file and the sizes read from the tensors."""
    t = {"wte.weight": np.ones((5, 64)), "wpe.weight": np.ones((3, 64)), "ln_f.weight": np.ones(64),
         "ln_f.bias": np.zeros(64)}
    folder = hf_folder(tmp_path / "hf", t)
    weights = os.path.join(str(folder), "model.safetensors")
    with pytest.raises(UserError) as e:
        load_hf(str(folder))
    assert one_line(e) == f"{weights}: corrupt header (maxT=3 V=5 L=0 NH=1 C=64)"


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_save_hf_export_folder_that_is_a_file_named_as_the_export_folder(tmp_path, where):
    """save_hf to a path that is a file, or lies under one: one line calling it the export folder."""
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "a file" else tmp_path / "f" / "hf"
    expected = {"a file": f"export folder {out} is a file, not a folder: give a folder path",
                "under a file": f"cannot create the export folder {out}: a part of the path is a file, not a folder"}
    with pytest.raises(UserError) as e:
        save_hf(str(out), TINY, random_flat(TINY))
    assert one_line(e) == expected[where]


# ------------------------------------------------------------------------------ training-state loader section
M3 = np.array([0.5, -1.25, 3.0], np.float32)
V3 = np.array([0.25, 2.0, 0.125], np.float32)


@pytest.mark.parametrize("n_shards, n_samples", [(2600, 3), (2, 2600)])
def test_training_state_with_thousands_of_shards_or_samples(tmp_path, n_shards, n_samples):
    """A shard order or a sample order longer than the 2520-byte mt19937 struct after it (2600 int32)
    reads back whole, with and without the parameter count."""
    rng = np.random.default_rng(0)
    shards, samples = rng.permutation(n_shards).tolist(), rng.permutation(n_samples).tolist()
    path = tmp_path / "state.bin"
    path.write_bytes(shuffled_state_file(M3, V3, shards, samples))
    for hint in (3, None):
        st = load_state(path, num_parameters=hint)
        assert st["m"].tolist() == M3.tolist() and st["v"].tolist() == V3.tolist()
        assert st["loader_state"]["shard_indices"] == shards
        assert st["loader_state"]["intra_shard_indices"] == samples


def test_training_state_with_an_empty_shard_order_refused_in_one_line(tmp_path):
    """A data-loader section with 0 shards (u64 0, no int32) and 2 samples: there is no shard 0 to resume
    in, so the file is refused as a corrupt data-loader state, in one line."""
    path = tmp_path / "state.bin"
    path.write_bytes(shuffled_state_file(M3, V3, [], [1, 0]))
    with pytest.raises(UserError) as e:
        load_state(path, num_parameters=3)
    assert one_line(e) == f"{path}: corrupt data-loader state (shard 0 of 0, sample 0 of 2)"


def test_training_state_sample_count_with_its_top_bit_set_refused(tmp_path):
    """m and v of 300 floats, 30 shards, then a u64 sample count of 2^64 - 630 and nothing after: the
    count runs past the end of the file (it is not a small negative number), so the data-loader state
    is refused as truncated or corrupt."""
    P, n = 300, 30
    raw = shuffled_state_file(np.zeros(0), np.zeros(0), [0], [0])[:HEADER]
    raw += np.full(P, 0.5, "<f4").tobytes() + np.full(P, 0.25, "<f4").tobytes()
    raw += struct.pack(f"<Q{n}i", n, *range(n)) + struct.pack("<Q", 2**64 - 630)
    path = tmp_path / "state.bin"
    path.write_bytes(raw)
    with pytest.raises(UserError) as e:
        load_state(path, num_parameters=P)
    assert one_line(e) == f"{path}: truncated or corrupt data-loader state after the optimizer state"
