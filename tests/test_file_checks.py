"""What the readers of llm.c's model, debug-state and training-state files accept and refuse, field by
field: every error names the kind of file, each header field out of range is refused on its own, the
edges that are legal (step 0, T = 1, a loader position at the end of its shard) are read, and arrays
come back in the dtypes the callers expect."""
import struct

import numpy as np
import pytest

from llmnp import GPT2Config
from llmnp.checkpoint import (bf16_bits_to_float32, float32_to_bf16_bits, load_model, load_state,
                              read_debug_state, save_model, save_state, write_debug_state)
from llmnp.data import MT19937
from llmnp.errors import UserError
from llmnp.params import num_parameters

CONFIG = GPT2Config(max_seq_len=11, vocab_size=37, padded_vocab_size=48, num_layers=3, num_heads=2, channels=10)


@pytest.mark.parametrize("read, what", [(load_model, "model file"), (read_debug_state, "debug state"),
                                        (load_state, "training state")])
def test_errors_name_the_kind_of_file(tmp_path, read, what):
    with pytest.raises(UserError, match=f"^{what} not found"):
        read(tmp_path / "missing.bin")
    (tmp_path / "zeros.bin").write_bytes(bytes(1024 + 16))
    with pytest.raises(UserError, match=f"bad magic 0, not a {what} "):
        read(tmp_path / "zeros.bin")


# ------------------------------------------------------------------------------ training state
def state_file(path, P=6, step=3, master=False, **fields):
    """A valid state, then header int32 slots overwritten: fields = {slot: value}."""
    m, v = np.arange(P, dtype=np.float32) + 1, np.arange(P, dtype=np.float32) + 2
    save_state(path, step, m, v, master=m * 3 if master else None, rank=1, world_size=2)
    raw = bytearray(path.read_bytes())
    for slot, value in fields.items():
        struct.pack_into("<i", raw, 4 * int(slot[1:]), value)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("fields", [{"h2": 0}, {"h3": 2}, {"h3": -1}, {"h4": 2}, {"h5": 2}, {"h4": -1},
                                    {"h10": -1}])
def test_each_bad_state_header_field_alone_is_refused(tmp_path, fields):
    path = state_file(tmp_path / "s.bin", **fields)
    with pytest.raises(UserError, match="corrupt training-state header"):
        load_state(path, num_parameters=6)


def test_legal_state_header_edges_are_read(tmp_path):
    s = load_state(state_file(tmp_path / "s.bin", step=0, h6=5, h7=-9), num_parameters=6)   # slots 6-9 unused
    assert s["step"] == 0 and (s["rank"], s["world_size"]) == (1, 2)
    assert s["m"].dtype == np.float32 and s["v"].dtype == np.float32
    s = load_state(state_file(tmp_path / "t.bin", master=True), num_parameters=6)
    assert s["master"].dtype == np.float32 and s["master"].tolist() == [3.0, 6.0, 9.0, 12.0, 15.0, 18.0]


@pytest.mark.parametrize("master, arrays", [(False, "m and v"), (True, "m, v and master weights")])
def test_state_of_another_size_names_its_arrays(tmp_path, master, arrays):
    path = state_file(tmp_path / "s.bin", master=master)
    with pytest.raises(UserError, match=rf"holds AdamW state \({arrays}\) for 6 parameters, this run's model has 4"):
        load_state(path, num_parameters=4)
    raw = path.read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-3])
    with pytest.raises(UserError, match=rf"do not fit a training state with {arrays}: truncated"):
        load_state(tmp_path / "cut.bin")


@pytest.mark.parametrize("index, name", [(0, "AdamW m"), (6, "AdamW v"), (12, "master weights")])
def test_non_finite_state_names_the_array(tmp_path, index, name):
    path = state_file(tmp_path / "s.bin", master=True)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, 1024 + 4 * (index + 1), float("nan"))
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f": {name} holds NaN \\(first at parameter 1 of 6\\)"):
        load_state(path, num_parameters=6)


def shuffled_state(path, shard, sample):
    loader = {"current_shard_idx": shard, "current_sample_idx": sample, "should_shuffle": 1,
              "shard_indices": [1, 0], "intra_shard_indices": [2, 0, 1], "rng": MT19937(42).state_dict()}
    save_state(path, 1, np.ones(4, np.float32), np.ones(4, np.float32), loader_state=loader)
    return path


def test_loader_position_at_the_end_of_a_shard_is_legal_past_it_is_not(tmp_path):
    s = load_state(shuffled_state(tmp_path / "a.bin", 1, 3), num_parameters=4)     # the last shard, all read
    assert (s["loader_state"]["current_shard_idx"], s["loader_state"]["current_sample_idx"]) == (1, 3)
    for name, shard, sample in (("b", 2, 0), ("c", 0, 4), ("d", 2, 3)):
        with pytest.raises(UserError, match="corrupt data-loader state"):
            load_state(shuffled_state(tmp_path / f"{name}.bin", shard, sample), num_parameters=4)


# --------------------------------------------------------------------------------- debug state
def debug_file(path, B, T, V, grads, extra=b""):
    rng = np.random.default_rng(0)
    ints = rng.integers(0, V, size=2 * B * T).tolist()
    logits = rng.standard_normal(B * T * V).tolist()
    raw = (struct.pack("<256i", 20240327, 2, B, T, *([0] * 252)) + struct.pack(f"<{2 * B * T}i", *ints)
           + struct.pack(f"<{B * T * V}f", *logits) + struct.pack("<f", 2.5)
           + struct.pack(f"<{len(grads)}f", *grads) + extra)
    path.write_bytes(raw)
    return path


def test_debug_state_without_a_config_reads_gpt2_vocab(tmp_path):
    d = read_debug_state(debug_file(tmp_path / "d.bin", 1, 1, 50257, [0.5] * 7))       # any number of gradients
    assert (d["B"], d["T"], d["loss"]) == (1, 1, 2.5) and d["grads"].tolist() == [0.5] * 7
    assert d["inputs"].dtype == np.int32 and d["targets"].dtype == np.int32
    assert d["logits"].dtype == np.float32 and d["logits"].shape == (1, 1, 50257) and d["grads"].dtype == np.float32
    with pytest.raises(UserError, match="do not fit a debug state of B=1 T=1 V=50257"):
        read_debug_state(debug_file(tmp_path / "e.bin", 1, 1, 50257, [0.5] * 7, extra=b"\0\0"))
    with pytest.raises(UserError, match="do not fit a debug state of B=1 T=1 V=50257"):
        read_debug_state(debug_file(tmp_path / "f.bin", 1, 1, 50257, []))              # no gradients at all


def test_debug_state_t1_and_size_message(tmp_path):
    n = num_parameters(CONFIG)
    path = debug_file(tmp_path / "d.bin", 2, 1, CONFIG.vocab_size, [0.25] * n)
    d = read_debug_state(path, CONFIG)
    assert (d["B"], d["T"]) == (2, 1) and d["targets"].shape == (2, 1) and d["grads"].shape == (n,)
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-4])
    with pytest.raises(UserError, match=f"B=2 T=1 and the model's V=37, {n:,} parameters mean"):
        read_debug_state(tmp_path / "cut.bin", CONFIG)
    for B, T in ((0, 1), (1, 0), (-1, 2)):
        with pytest.raises(UserError, match=f"corrupt debug state header \\(B={B} T={T}\\)"):
            read_debug_state(_patched(tmp_path, path, B, T), CONFIG)


def _patched(tmp_path, path, B, T):
    """path with its header's B and T overwritten."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<2i", raw, 8, B, T)
    out = tmp_path / f"bt_{B}_{T}.bin"
    out.write_bytes(bytes(raw))
    return out


def test_debug_state_writer_wants_2d_batches(tmp_path):
    grads = np.zeros(num_parameters(CONFIG), np.float32)
    for x, y in ((np.zeros(4, np.int32), np.zeros(4, np.int32)), (np.zeros((2, 2), np.int32), np.zeros((2, 3), np.int32))):
        with pytest.raises(ValueError, match="must both be \\(B, T\\)"):
            write_debug_state(tmp_path / "d.bin", x, y, np.zeros((2, 2, 48)), 1.0, grads, CONFIG)


# ------------------------------------------------------------------------------------------ bf16
def test_bf16_of_any_float_input_and_of_nan_payloads():
    x64 = np.array([1.0 + 2**-8, -2.5, 3.0e38, 1e-3])
    assert np.array_equal(float32_to_bf16_bits(x64), float32_to_bf16_bits(x64.astype(np.float32)))
    assert float32_to_bf16_bits([0.1, 1.0]).tolist() == float32_to_bf16_bits(np.float32([0.1, 1.0])).tolist()
    # NaNs whose payload sits in the low bits would round to inf (0x7F80) or wrap: all become 0x7FC0
    nans = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7FC00000], np.uint32).view(np.float32)
    assert float32_to_bf16_bits(nans).tolist() == [0x7FC0] * 4
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(nans))).all()


# ---------------------------------------------------------------------------------- model file
def test_model_file_size_message_and_version1_dtype(tmp_path):
    n = num_parameters(CONFIG)
    flat = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    flat[CONFIG.vocab_size * CONFIG.channels:CONFIG.padded_vocab_size * CONFIG.channels] = 0
    save_model(tmp_path / "m.bin", CONFIG, flat)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:-4])
    with pytest.raises(UserError, match=rf"its header \(maxT=11 V=37 Vp=48 L=3 NH=2 C=10\) means {n:,} parameters"):
        load_model(tmp_path / "cut.bin")
    # version 1: V rows of wte, no padding; the reader pads with float32 zeros
    V, C = CONFIG.vocab_size, CONFIG.channels
    unpadded = np.concatenate([flat[:V * C], flat[CONFIG.padded_vocab_size * C:]])
    head = struct.pack("<256i", 20240326, 1, 11, V, 3, 2, C, *([0] * 249))
    (tmp_path / "v1.bin").write_bytes(head + unpadded.astype("<f4").tobytes())
    config, got = load_model(tmp_path / "v1.bin")
    assert got.dtype == np.float32 and config.padded_vocab_size == 128
    assert np.array_equal(got[:V * C], flat[:V * C]) and np.array_equal(got[128 * C:], flat[48 * C:])


def test_save_state_defaults_and_float32_payload(tmp_path):
    m64, v64 = np.linspace(0.1, 0.7, 5), np.linspace(1.5, 2.5, 5)         # float64 in, float32 on disk
    save_state(tmp_path / "s.bin", 2, m64, v64)
    raw = (tmp_path / "s.bin").read_bytes()
    assert len(raw) == 1024 + 2 * 4 * 5
    u64 = struct.unpack_from("<128Q", raw, 0)
    assert (u64[10], u64[11], u64[15], u64[16]) == (0, 0, 0, 0)             # no rng state, loader at the start
    assert struct.unpack_from("<6i", raw, 0) == (20240527, 1, 1, 0, 0, 0)
    assert raw[1024:] == m64.astype("<f4").tobytes() + v64.astype("<f4").tobytes()
    save_state(tmp_path / "t.bin", 2, m64, v64, master=m64 + 1)               # master weights too
    assert (tmp_path / "t.bin").read_bytes()[1024 + 40:] == (m64 + 1).astype("<f4").tobytes()


@pytest.mark.parametrize("m, v, master", [
    (np.zeros((2, 3)), np.zeros((2, 3)), None),                               # not flat
    (np.zeros(4), np.zeros(5), None),                                         # m and v differ
    (np.zeros(4), np.zeros(4), np.zeros(3)),                                  # master differs
])
def test_save_state_wants_flat_arrays_of_one_length(tmp_path, m, v, master):
    with pytest.raises(ValueError, match="flat arrays of one length"):
        save_state(tmp_path / "s.bin", 1, m, v, master=master)
