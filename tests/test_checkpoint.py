"""llm.c model / debug-state / training-state files byte for byte against struct-based writers, bf16
rounding, HF GPT-2 safetensors import/export checked against a from-the-paper forward pass, and
safetensors / HF files built by hand from the format's definition."""
import dataclasses
import json
import os
import struct

import numpy as np
import pytest

from llmnp import GPT2, GPT2Config
from llmnp.checkpoint import (bf16_bits_to_float32, float32_to_bf16_bits, load_hf, load_model, load_state,
                              read_debug_state, read_safetensors, read_weights, save_hf, save_model, save_state,
                              write_debug_state, write_safetensors)
from llmnp.config import pad_vocab
from llmnp.data import MT19937, DataLoader, write_shard
from llmnp.errors import UserError
from llmnp.params import num_parameters

HEADER = 1024
TINY = GPT2Config.tiny(vocab_size=50, max_seq_len=16, num_layers=2, num_heads=2, channels=8, pad_to=16)


def random_flat(config, seed=0):
    flat = np.random.default_rng(seed).standard_normal(num_parameters(config)).astype(np.float32)
    flat[config.vocab_size * config.channels:config.padded_vocab_size * config.channels] = 0   # padded rows
    return flat


def header(*fields):
    return struct.pack("<256i", *fields, *([0] * (256 - len(fields))))


def bf16_reference(values):
    """Round-to-nearest-even float32 -> bf16 bits, one Python int at a time."""
    out = []
    for x in np.asarray(values, np.float32).tolist():
        bits = struct.unpack("<I", struct.pack("<f", x))[0]
        if x != x:
            out.append(0x7FC0)
            continue
        lower, upper = bits & 0xFFFF, bits >> 16
        if lower > 0x8000 or (lower == 0x8000 and upper & 1):
            upper += 1
        out.append(upper)
    return out


# ------------------------------------------------------------------------------------------ bf16
def test_bf16_round_to_nearest_even():
    edge = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.5, 0.0, -0.0, 3.4e38, -3.4e38,
                     np.inf, -np.inf, np.nan, 1e-40, 65504.0], np.float32)
    x = np.concatenate([edge, np.random.default_rng(0).standard_normal(5000).astype(np.float32) * 10])
    bits = float32_to_bf16_bits(x)
    assert bits.dtype == np.uint16 and bits.tolist() == bf16_reference(x)
    back = bf16_bits_to_float32(bits)
    assert back.dtype == np.float32
    assert np.array_equal(float32_to_bf16_bits(back), bits)                 # bf16 values are fixed points
    finite = np.isfinite(x) & (np.abs(x) < 3e38) & (np.abs(x) > 1e-37)     # normal numbers
    assert np.all(np.abs(back[finite] - x[finite]) <= np.abs(x[finite]) * 2**-8)


# ------------------------------------------------------------------------------------------ model file
def struct_model_file(config, flat, version):
    c = config
    out = header(20240326, version, c.max_seq_len, c.vocab_size, c.num_layers, c.num_heads, c.channels,
                 c.padded_vocab_size)
    if version == 3:
        return out + struct.pack(f"<{flat.size}f", *flat.tolist())
    return out + struct.pack(f"<{flat.size}H", *bf16_reference(flat))


@pytest.mark.parametrize("dtype, version", [("float32", 3), ("bfloat16", 5)])
def test_model_file_byte_exact(tmp_path, dtype, version):
    flat = random_flat(TINY)
    save_model(tmp_path / "m.bin", TINY, flat, dtype=dtype)
    assert (tmp_path / "m.bin").read_bytes() == struct_model_file(TINY, flat, version)
    (tmp_path / "s.bin").write_bytes(struct_model_file(TINY, flat, version))
    config, got = load_model(tmp_path / "s.bin")
    assert config == TINY and got.dtype == np.float32
    expected = flat if version == 3 else bf16_bits_to_float32(float32_to_bf16_bits(flat))
    assert np.array_equal(got, expected)


def test_model_file_124M_size():
    # llm.c's documented sizes, without writing 500 MB: 124,475,904 parameters, 497,904,640 B fp32
    assert HEADER + 4 * num_parameters(GPT2Config.preset("d12")) == 497_904_640
    assert HEADER + 2 * num_parameters(GPT2Config.preset("d12")) == 248_952_832


def test_unpadded_version1_file(tmp_path):
    c = TINY
    flat = random_flat(c)
    V, C, Vp = c.vocab_size, c.channels, c.padded_vocab_size
    unpadded = np.concatenate([flat[:V * C], flat[Vp * C:]])
    raw = header(20240326, 1, c.max_seq_len, V, c.num_layers, c.num_heads, C) + unpadded.astype("<f4").tobytes()
    (tmp_path / "old.bin").write_bytes(raw)
    config, got = load_model(tmp_path / "old.bin")
    assert config.padded_vocab_size == pad_vocab(V) == 128 and config.vocab_size == V
    assert np.array_equal(got[:V * C], flat[:V * C]) and not got[V * C:config.padded_vocab_size * C].any()
    assert np.array_equal(got[config.padded_vocab_size * C:], flat[Vp * C:])
    assert got.dtype == np.float32                      # the zero rows added too: float32 like the rest


@pytest.mark.parametrize("field", ["maxT", "V", "L", "NH", "C"])
def test_model_file_with_a_zero_size_refused(tmp_path, field):
    """A header with one size 0 (maxT, V, L, NH or C), the file as long as that header says (llm.c's
    parameter count: Vp*C + maxT*C + L*(12*C*C + 13*C) + 2*C floats, Vp from the header): refused as a
    corrupt header, not read as an empty model (nor crashing on 0 heads)."""
    sizes = {"maxT": 16, "V": 50, "L": 2, "NH": 2, "C": 8, "Vp": 64}
    sizes[field] = 0
    maxT, V, L, NH, C, Vp = (sizes[k] for k in ("maxT", "V", "L", "NH", "C", "Vp"))
    n = Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C
    (tmp_path / "z.bin").write_bytes(header(20240326, 3, maxT, V, L, NH, C, Vp) + bytes(4 * n))
    with pytest.raises(UserError, match="corrupt header"):
        load_model(tmp_path / "z.bin")


@pytest.mark.parametrize("index, where", [(0, "wte"), (640 + 8, "ln1w of layer 1"), (2400 - 8, "lnfb")])
def test_model_file_nonfinite_first_value_of_a_tensor(tmp_path, index, where):
    """NaN as the first value of a tensor (TINY's flat layout by hand: wte 64*8 at 0, wpe 16*8 at 512,
    ln1w 2*8 at 640, ..., lnfb the last 8 of 2400) is found and named, not given to its neighbour."""
    flat = random_flat(TINY)
    assert flat.size == 2400
    flat[index] = np.nan
    (tmp_path / "m.bin").write_bytes(struct_model_file(TINY, flat, 3))
    with pytest.raises(UserError, match=f"parameter {where} holds NaN"):
        load_model(tmp_path / "m.bin")


def test_model_file_errors(tmp_path):
    good = struct_model_file(TINY, random_flat(TINY), 3)
    cases = {
        "magic": (header(20240327) + good[1024:], "bad magic"),
        "version": (good[:4] + struct.pack("<i", 4) + good[8:], "version 4"),
        "truncated": (good[:-4], "truncated"),
        "longer": (good + b"\0\0\0\0", "disagree"),
        "header": (good[:8] + struct.pack("<i", 17) + good[12:], "disagree"),        # maxT 16 -> 17
        "heads": (good[:20] + struct.pack("<i", 3) + good[24:], "multiple of num_heads"),
        "tiny": (good[:10], "truncated"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(UserError, match=message):
            load_model(tmp_path / name)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.bin")


def test_gpt2_from_and_to_checkpoint(tmp_path):
    model = GPT2(TINY, seed=3)
    model.save_checkpoint(tmp_path / "a.bin")
    again = GPT2.from_checkpoint(tmp_path / "a.bin")
    assert np.array_equal(again.params_memory, model.params_memory)
    model.save_checkpoint(tmp_path / "b.bin", dtype="bfloat16")
    half = GPT2.from_checkpoint(tmp_path / "b.bin")
    assert np.allclose(half.params_memory, model.params_memory, rtol=2**-8, atol=1e-30)


def test_training_folder_reads_its_latest_complete_checkpoint(tmp_path):
    """A train_gpt2.py output folder as a model path: the checkpoint read is the highest step with both
    a DONE_ marker (written last) and its model file. Steps 5 and 20 are complete, 30 has no DONE_ yet
    (still being written), 40's model file is gone: step 20's weights."""
    flats = {step: random_flat(TINY, seed=step) for step in (5, 20, 30)}
    for step, flat in flats.items():
        (tmp_path / f"model_{step:08d}.bin").write_bytes(struct_model_file(TINY, flat, 3))
    for step in (5, 20, 40):
        (tmp_path / f"DONE_{step:08d}").touch()
    config, flat, path = read_weights(tmp_path)
    assert path == str(tmp_path / "model_00000020.bin")
    assert config == TINY and np.array_equal(flat, flats[20])


def test_training_folder_without_a_finished_checkpoint(tmp_path):
    """A folder with model_*.bin but no DONE_ marker (a checkpoint cut off while written) is refused
    saying so, and a folder with other files only as holding no model at all."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_00000010.bin").write_bytes(struct_model_file(TINY, random_flat(TINY), 3))
    (tmp_path / "run" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="model_.*bin files but no DONE_"):
        read_weights(tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_10.bin").write_bytes(struct_model_file(TINY, random_flat(TINY), 3))
    with pytest.raises(UserError, match="holds neither a training checkpoint"):
        read_weights(tmp_path / "other")


# ------------------------------------------------------------------------------------------ debug state
def test_debug_state_byte_exact(tmp_path):
    B, T, V = 2, 3, TINY.vocab_size
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    logits = rng.standard_normal((B, T, TINY.padded_vocab_size)).astype(np.float32)
    grads = random_flat(TINY, seed=2)
    write_debug_state(tmp_path / "d.bin", x, y, logits, 3.25, grads, TINY)
    expected = (header(20240327, 2, B, T) + struct.pack(f"<{2 * B * T}i", *x.ravel().tolist(), *y.ravel().tolist())
                + struct.pack(f"<{B * T * V}f", *logits[..., :V].ravel().tolist()) + struct.pack("<f", 3.25)
                + struct.pack(f"<{grads.size}f", *grads.tolist()))
    assert (tmp_path / "d.bin").read_bytes() == expected
    for config in (TINY, None):
        if config is None:
            # without a config, V is GPT-2's: write one with V = 50257 to read that way
            Vg = 50257
            lg = rng.standard_normal((1, 2, Vg)).astype(np.float32)
            raw = header(20240327, 2, 1, 2) + struct.pack("<4i", 1, 2, 3, 4) + lg.astype("<f4").tobytes() \
                + struct.pack("<f", 1.5) + grads.astype("<f4").tobytes()
            (tmp_path / "g.bin").write_bytes(raw)
            st = read_debug_state(tmp_path / "g.bin")
            assert st["inputs"].tolist() == [[1, 2]] and st["targets"].tolist() == [[3, 4]]
            assert np.array_equal(st["logits"], lg) and st["loss"] == 1.5 and np.array_equal(st["grads"], grads)
            continue
        st = read_debug_state(tmp_path / "d.bin", config)
        assert (st["B"], st["T"]) == (B, T) and st["inputs"].dtype == np.int32
        assert np.array_equal(st["inputs"], x) and np.array_equal(st["targets"], y)
        assert np.array_equal(st["logits"], logits[..., :V]) and st["loss"] == 3.25
        assert np.array_equal(st["grads"], grads)
    (tmp_path / "t.bin").write_bytes(expected[:-8])
    with pytest.raises(UserError, match="truncated"):
        read_debug_state(tmp_path / "t.bin", TINY)
    with pytest.raises(UserError, match="bad magic"):
        read_debug_state(_with_magic(tmp_path, expected, 20240326), TINY)


def _with_magic(tmp_path, raw, magic):
    path = tmp_path / f"magic{magic}.bin"
    path.write_bytes(struct.pack("<i", magic) + raw[4:])
    return path


# ------------------------------------------------------------------------------------------ training state
def struct_state_file(step, m, v, master, world, rank, rng_state, rng_last, loader):
    h = list(struct.unpack("<256i", header(20240527, 1, world, rank, int(master is not None),
                                           loader["should_shuffle"])))
    h[10] = step
    raw = bytearray(struct.pack("<256i", *h))
    for slot, value in ((20, rng_state), (22, rng_last), (30, loader["current_shard_idx"]),
                        (32, loader["current_sample_idx"])):
        struct.pack_into("<Q", raw, 4 * slot, value)
    raw += struct.pack(f"<{m.size}f", *m.tolist()) + struct.pack(f"<{v.size}f", *v.tolist())
    if master is not None:
        raw += struct.pack(f"<{master.size}f", *master.tolist())
    if loader["should_shuffle"]:
        s, i, r = loader["shard_indices"], loader["intra_shard_indices"], loader["rng"]
        raw += struct.pack(f"<Q{len(s)}i", len(s), *s) + struct.pack(f"<Q{len(i)}i", len(i), *i)
        raw += struct.pack("<QiI624I2I", r["seed"], r["left"], r["next"], *r["state"], 0, 0x9908B0DF)
    return bytes(raw)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("with_master", [False, True])
def test_training_state_byte_exact_and_resume(tmp_path, shuffle, with_master):
    rng = np.random.default_rng(0)
    for i, n in enumerate([300, 170, 250]):
        write_shard(tmp_path / f"tr_{i}.bin", rng.integers(0, 50, n))
    pattern = str(tmp_path / "tr_*.bin")
    loader = DataLoader(pattern, 2, 4, rank=1, world_size=2, shuffle=shuffle, vocab_size=50)
    for _ in range(11):
        loader.next_batch()
    P = 37
    m, v = rng.standard_normal(P).astype(np.float32), rng.random(P).astype(np.float32)
    master = rng.standard_normal(P).astype(np.float32) if with_master else None
    fields = dict(step=1234, m=m, v=v, master=master, loader_state=loader.state_dict(), rank=1, world_size=2,
                  rng_state=2**63 + 5, rng_state_last_update=13371337)
    save_state(tmp_path / "state.bin", **fields)
    assert (tmp_path / "state.bin").read_bytes() == struct_state_file(
        1234, m, v, master, 2, 1, 2**63 + 5, 13371337, loader.state_dict())
    for hint in (None, P):
        st = load_state(tmp_path / "state.bin", num_parameters=hint)
        assert (st["step"], st["world_size"], st["rank"], st["should_shuffle"]) == (1234, 2, 1, shuffle)
        assert (st["rng_state"], st["rng_state_last_update"]) == (2**63 + 5, 13371337)
        assert np.array_equal(st["m"], m) and np.array_equal(st["v"], v)
        assert (st["master"] is None) if master is None else np.array_equal(st["master"], master)
        assert st["loader_state"] == json.loads(json.dumps(loader.state_dict()))
    resumed = DataLoader(pattern, 2, 4, rank=1, world_size=2, shuffle=shuffle, vocab_size=50)
    resumed.load_state_dict(st["loader_state"])
    for _ in range(40):
        assert all(np.array_equal(a, b) for a, b in zip(loader.next_batch(), resumed.next_batch()))
    raw = (tmp_path / "state.bin").read_bytes()
    for name, bad in {"truncated": raw[:-3], "magic": struct.pack("<i", 1) + raw[4:]}.items():
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(UserError):
            load_state(tmp_path / name)


def shuffled_state_file(m, v, shards, samples, seed=5):
    """A training state (no master weights) with a data-loader section, laid out by hand: header, m, v as
    little-endian float32, u64 n, n int32 shard order, u64 k, k int32 sample order, the mt19937 struct."""
    loader = {"should_shuffle": 1, "current_shard_idx": 0, "current_sample_idx": 0, "shard_indices": shards,
              "intra_shard_indices": samples, "rng": MT19937(seed).state_dict()}
    head = struct_state_file(3, np.zeros(0), np.zeros(0), None, 1, 0, 0, 0, loader)[:HEADER]
    r = loader["rng"]
    return (head + np.asarray(m, "<f4").tobytes() + np.asarray(v, "<f4").tobytes()
            + struct.pack(f"<Q{len(shards)}i", len(shards), *shards)
            + struct.pack(f"<Q{len(samples)}i", len(samples), *samples)
            + struct.pack("<QiI624I2I", r["seed"], r["left"], r["next"], *r["state"], 0, 0x9908B0DF))


@pytest.mark.parametrize("shards, samples", [([1, 0, 2], [0]), ([0], [1, 0, 2]), ([0], [2, 3, 0, 1]),
                                             ([2, 3, 0, 1], [0])])
def test_training_state_loader_orders_found_without_the_parameter_count(tmp_path, shards, samples):
    """Without num_parameters, load_state finds where m and v end by walking back from the end: the
    mt19937 struct, [u64 k][k int32 sample order], [u64 n][n int32 shard order]. Some permutations hold
    look-alikes: [1, 0, 2] holds (1, 0), a u64 1 followed by one int32 ([2], not a permutation) just
    after the real [u64 3]; [2, 3, 0, 1] ends in [0, 1], a permutation of 2 int32 that follow a 2 (but the
    u64 there is 2 + 3 * 2^32, not 2). Each must be passed over to the real count, in the shard order
    as in the sample order."""
    P = 3
    m, v = np.array([0.5, -1.25, 3.0], np.float32), np.array([0.25, 2.0, 0.125], np.float32)
    (tmp_path / "s.bin").write_bytes(shuffled_state_file(m, v, shards, samples))
    st = load_state(tmp_path / "s.bin")
    assert st["m"].tolist() == m.tolist() and st["v"].tolist() == v.tolist() and len(st["m"]) == P
    assert st["loader_state"]["shard_indices"] == shards and st["loader_state"]["intra_shard_indices"] == samples


def test_training_state_of_a_large_model_without_the_parameter_count(tmp_path):
    """A model of 2^21 + 1 parameters (m and v: 16 MiB, more than 4M int32 to walk back over, where the
    search goes a few million positions at a time), shuffled: its size is still found from the file."""
    P = 2**21 + 1
    m, v = np.full(P, 0.5, np.float32), np.full(P, 0.25, np.float32)
    m[-1], v[0] = -3.0, 7.0
    (tmp_path / "s.bin").write_bytes(shuffled_state_file(m, v, [1, 0], [2, 0, 1]))
    st = load_state(tmp_path / "s.bin")
    assert len(st["m"]) == P and st["m"][-1] == -3.0 and st["v"][0] == 7.0 and st["v"][-1] == 0.25
    assert st["loader_state"]["shard_indices"] == [1, 0] and st["loader_state"]["intra_shard_indices"] == [2, 0, 1]


# ------------------------------------------------------------------------------------------ HF GPT-2
def hf_tensors(config, seed=0, prefix="", buffers=True, lm_head=False):
    """A random GPT-2 the way transformers stores it: Conv1D weights [in, out], V rows, mask buffers."""
    rng = np.random.default_rng(seed)
    V, C, L, maxT = config.vocab_size, config.channels, config.num_layers, config.max_seq_len
    r = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)   # noqa: E731
    t = {"wte.weight": r(V, C), "wpe.weight": r(maxT, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for l in range(L):
        h = f"h.{l}."
        t.update({h + "ln_1.weight": 1 + r(C), h + "ln_1.bias": r(C), h + "ln_2.weight": 1 + r(C), h + "ln_2.bias": r(C),
                  h + "attn.c_attn.weight": r(C, 3 * C), h + "attn.c_attn.bias": r(3 * C),
                  h + "attn.c_proj.weight": r(C, C), h + "attn.c_proj.bias": r(C),
                  h + "mlp.c_fc.weight": r(C, 4 * C), h + "mlp.c_fc.bias": r(4 * C),
                  h + "mlp.c_proj.weight": r(4 * C, C), h + "mlp.c_proj.bias": r(C)})
        if buffers:
            t[h + "attn.bias"] = np.tril(np.ones((maxT, maxT), np.float32))[None, None]
            t[h + "attn.masked_bias"] = np.array(-1e4, np.float32)
    t = {prefix + k: v for k, v in t.items()}
    if lm_head:
        t["lm_head.weight"] = t[prefix + "wte.weight"].copy()
    return t


def reference_logits(t, config, tokens):
    """GPT-2 forward straight from HF tensors (picoGPT style, Conv1D: x @ w + b), float64."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    C, NH = config.channels, config.num_heads

    def ln(x, g, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    T = len(tokens)
    x = t["wte.weight"][tokens] + t["wpe.weight"][:T]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(config.num_layers):
        p = lambda n: t[f"h.{l}.{n}"]   # noqa: E731
        qkv = ln(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (a.reshape(T, NH, C // NH).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(C // NH) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = gelu(ln(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    return ln(x, t["ln_f.weight"], t["ln_f.bias"]) @ t["wte.weight"].T


def test_hf_import_export_identical_logits(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    config = GPT2Config(max_seq_len=16, vocab_size=61, padded_vocab_size=128, num_layers=2, num_heads=2, channels=128)
    t = hf_tensors(config)
    os.makedirs(tmp_path / "hf")
    safetensors_numpy.save_file(t, str(tmp_path / "hf" / "model.safetensors"))   # an independent writer
    tokens = np.array([[5, 60, 0, 17, 33, 2, 9]], np.int32)
    ref = reference_logits(t, config, tokens[0])

    model = GPT2.from_pretrained(str(tmp_path / "hf"), dtype=np.float64)           # no config.json: inferred
    assert model.config == config
    model.forward(tokens)
    assert np.allclose(model.logits[0, :, :61], ref, rtol=1e-10, atol=1e-10)
    assert not model.params["wte"][61:].any()

    model32 = GPT2.from_pretrained(str(tmp_path / "hf" / "model.safetensors"))
    model32.forward(tokens)
    model32.save_checkpoint(tmp_path / "m.bin")
    again = GPT2.from_checkpoint(tmp_path / "m.bin")
    again.forward(tokens)
    assert np.array_equal(again.logits, model32.logits)

    # export back to HF: exact tensors (buffers dropped, prefix added), readable by safetensors itself
    config2, flat = load_model(tmp_path / "m.bin")
    save_hf(tmp_path / "out", config2, flat)
    back = safetensors_numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(back) == {"transformer." + k for k in t if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert all(np.array_equal(back["transformer." + k], t[k]) for k in t if "transformer." + k in back)
    hf_config = json.load(open(tmp_path / "out" / "config.json"))
    assert (hf_config["n_layer"], hf_config["n_head"], hf_config["n_embd"], hf_config["vocab_size"],
            hf_config["n_positions"]) == (2, 2, 128, 61, 16)
    config3, flat3 = load_hf(tmp_path / "out")
    assert config3 == config2 and np.array_equal(flat3, flat)


def test_hf_variants_and_errors(tmp_path):
    config = dataclasses.replace(TINY, padded_vocab_size=128)   # HF import pads V to a multiple of 128
    flat = random_flat(config)
    save_hf(tmp_path / "a", config, flat)                       # config.json gives NH (C=8 is not 64*NH)
    assert load_hf(tmp_path / "a")[0] == config
    tensors = read_safetensors(tmp_path / "a" / "model.safetensors")
    # no prefix, tied lm_head present, mask buffers present
    plain = {k[len("transformer."):]: v for k, v in tensors.items()}
    plain["lm_head.weight"] = plain["wte.weight"]
    plain["h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
    os.makedirs(tmp_path / "b")
    write_safetensors(tmp_path / "b" / "model.safetensors", plain)
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    c2, f2 = load_hf(tmp_path / "b")
    assert c2 == config and np.array_equal(f2, flat)
    raw = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert raw[8:].startswith(b"{") and struct.unpack("<Q", raw[:8])[0] % 8 == 0

    def bad(name, tensors, message, config_json=True):
        os.makedirs(tmp_path / name)
        write_safetensors(tmp_path / name / "model.safetensors", tensors)
        if config_json:
            (tmp_path / name / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
        with pytest.raises(UserError, match=message):
            load_hf(tmp_path / name)

    bad("untied", {**plain, "lm_head.weight": plain["wte.weight"] + 1}, "lm_head")
    bad("missing", {k: v for k, v in plain.items() if k != "h.1.mlp.c_fc.bias"}, "h.1.mlp.c_fc.bias is missing")
    bad("shape", {**plain, "h.0.attn.c_proj.weight": np.zeros((8, 9), np.float32)}, "shape")
    bad("extra", {**plain, "h.0.attn.rotary": np.zeros(3, np.float32)}, "unexpected")
    bad("noheads", plain, "multiple of 64", config_json=False)
    with pytest.raises(UserError, match="no model.safetensors"):
        load_hf(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0hello")
    with pytest.raises(UserError, match="not a safetensors"):
        load_hf(tmp_path / "junk.safetensors")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.safetensors").write_bytes(raw[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_hf(tmp_path / "cut")


def test_safetensors_interop(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b.c": np.array([1.5], np.float32)}
    write_safetensors(tmp_path / "mine.safetensors", t, metadata={"format": "pt"})
    theirs = safetensors_numpy.load_file(str(tmp_path / "mine.safetensors"))
    assert set(theirs) == set(t) and all(np.array_equal(theirs[k], t[k]) for k in t)
    # BF16 written by hand: header length, JSON header, raw bits
    head = json.dumps({"w": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]}}).encode()
    bits = np.array([[0x3F80, 0xC020]], "<u2")
    (tmp_path / "bf.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bits.tobytes())
    assert read_safetensors(tmp_path / "bf.safetensors")["w"].tolist() == [[1.0, -2.5]]


# ------------------------------------------------------------------------------ safetensors by hand
# safetensors and HF GPT-2 files built byte by byte here, from the format's definition (8-byte
# little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, then the raw
# little-endian data), never with llmnp's own writer, so a bug shared by the writer and the reader
# shows.
def st_bytes(entries, metadata=None):
    """A safetensors file: entries [(name, dtype, shape, raw bytes)], data laid out in that order, the
    header listing them in the reverse order (a JSON object's order means nothing: data_offsets place
    each tensor), padded with spaces to 8 bytes."""
    offsets, end = [], 0
    for _, _, _, raw in entries:
        offsets.append([end, end + len(raw)])
        end += len(raw)
    head = {} if metadata is None else {"__metadata__": metadata}
    for (name, dtype, shape, _), span in reversed(list(zip(entries, offsets))):
        head[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": span}
    blob = json.dumps(head).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + b"".join(raw for _, _, _, raw in entries)


def f32(values):
    values = list(np.ravel(values))
    return struct.pack(f"<{len(values)}f", *values)


def write_file(path, raw):
    path.write_bytes(raw)
    return path


# read_safetensors, files by hand
def test_read_safetensors_every_float_dtype_as_float32(tmp_path):
    """F32, F64, F16 and BF16 tensors (a scalar too), the header in another order than the data: each
    comes back as float32 of the right shape and value. F16 0x3C00 / 0xC000 are 1.0 / -2.0 (IEEE half);
    BF16 0x3F80 / 0x4049 are 1.0 / 3.140625 (float32's upper 16 bits)."""
    entries = [("x.f64", "F64", [3], struct.pack("<3d", 0.5, -2.25, 1000.0)),
               ("a.f32", "F32", [2, 2], f32([1.5, -3.0, 0.25, 7.0])),
               ("m.f16", "F16", [2], struct.pack("<2H", 0x3C00, 0xC000)),
               ("b.bf16", "BF16", [1, 2], struct.pack("<2H", 0x3F80, 0x4049)),
               ("s", "F32", [], f32([-0.75]))]
    path = write_file(tmp_path / "t.safetensors", st_bytes(entries, metadata={"format": "pt"}))
    got = read_safetensors(path)
    expected = {"x.f64": [0.5, -2.25, 1000.0], "a.f32": [[1.5, -3.0], [0.25, 7.0]], "m.f16": [1.0, -2.0],
                "b.bf16": [[1.0, 3.140625]], "s": -0.75}
    assert set(got) == set(expected)                          # __metadata__ is not a tensor
    for name, values in expected.items():
        assert got[name].dtype == np.float32, name            # whatever the stored dtype
        assert got[name].shape == np.shape(values), name
        assert got[name].tolist() == values, name


def test_read_safetensors_header_only_and_zero_size_tensors(tmp_path):
    """A file that is only its header (no tensors, or only empty ones: 8 + n bytes exactly) is a valid
    safetensors file; a zero-size tensor has data_offsets [b, b] (begin == end), also between two others
    (at the offset where the next one starts)."""
    only_metadata = write_file(tmp_path / "m.safetensors", st_bytes([], metadata={"format": "pt"}))
    assert read_safetensors(only_metadata) == {}
    empty = write_file(tmp_path / "e.safetensors", st_bytes([("e", "F32", [0, 4], b"")]))
    got = read_safetensors(empty)
    assert list(got) == ["e"] and got["e"].shape == (0, 4) and got["e"].dtype == np.float32
    entries = [("a", "F32", [1], f32([2.0])), ("z", "F32", [0], b""), ("c", "F32", [1], f32([3.0]))]
    between = write_file(tmp_path / "b.safetensors", st_bytes(entries))
    got = read_safetensors(between)
    assert got["a"].tolist() == [2.0] and got["z"].shape == (0,) and got["c"].tolist() == [3.0]


@pytest.mark.parametrize("size", range(8))
def test_read_safetensors_shorter_than_the_header_length(tmp_path, size):
    """0 to 7 bytes cannot hold the u64 header length: refused as not a safetensors file (one line)."""
    path = write_file(tmp_path / "s.safetensors", b"\x02" * size)
    with pytest.raises(UserError, match="not a safetensors file"):
        read_safetensors(path)


def test_read_safetensors_header_length_beyond_the_file(tmp_path):
    """The header length says 64 bytes, the file holds 2 after it (b'{}', valid JSON on its own): the
    length is checked against the file before any JSON is read, so the file is refused as not a
    safetensors file (not read as an empty header with a negative data size)."""
    path = write_file(tmp_path / "h.safetensors", struct.pack("<Q", 64) + b"{}")
    with pytest.raises(UserError, match="not a safetensors file"):
        read_safetensors(path)


def test_read_safetensors_shape_whose_size_overflows_int64(tmp_path):
    """shape [2^32, 2^32] of F32 is 2^66 bytes (2^64 elements wrap to 0 in int64): its empty
    data_offsets [0, 0] do not match, and the header is refused as corrupt, not accepted as 0 bytes."""
    raw = st_bytes([("big", "F32", [2**32, 2**32], b"")])
    path = write_file(tmp_path / "o.safetensors", raw)
    with pytest.raises(UserError, match="corrupt safetensors header"):
        read_safetensors(path)


# write_safetensors, files by hand
def test_write_safetensors_layout_by_hand(tmp_path):
    """The file field by field: u64 header length (a multiple of 8, space-padded), the JSON header with
    __metadata__ and each tensor's F32 dtype, shape and data_offsets in name order, then the data as
    little-endian float32, whatever the input's dtype or byte order (float64 rounded to float32 by
    struct, big-endian float32 swapped)."""
    tensors = {"b": np.array([0.1, 3.0], np.float64), "a": np.array([[1.5, -2.0]], ">f4")}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert n % 8 == 0
    assert json.loads(raw[8:8 + n]) == {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    assert raw[8 + n:] == struct.pack("<4f", 1.5, -2.0, 0.1, 3.0)


# load_hf, files by hand
# llm.c's parameter order (ParameterTensors) with each one's HF GPT-2 name and whether HF's Conv1D stores
# it [in, out] (llm.c keeps (out, in)); the per-layer ones are stacked over layers in llm.c's file
LLMC_ORDER = [("wte.weight", False), ("wpe.weight", False), ("ln_1.weight", False), ("ln_1.bias", False),
              ("attn.c_attn.weight", True), ("attn.c_attn.bias", False), ("attn.c_proj.weight", True),
              ("attn.c_proj.bias", False), ("ln_2.weight", False), ("ln_2.bias", False),
              ("mlp.c_fc.weight", True), ("mlp.c_fc.bias", False), ("mlp.c_proj.weight", True),
              ("mlp.c_proj.bias", False), ("ln_f.weight", False), ("ln_f.bias", False)]
UNSTACKED = ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")


def gpt2_tensors(V, maxT, C, L, seed=0):
    """HF GPT-2 tensors (Conv1D weights [in, out]) of random multiples of 1/8 (exact in float32)."""
    rng = np.random.default_rng(seed)
    shapes = {"wte.weight": (V, C), "wpe.weight": (maxT, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for l in range(L):
        shapes.update({f"h.{l}.ln_1.weight": (C,), f"h.{l}.ln_1.bias": (C,), f"h.{l}.ln_2.weight": (C,),
                       f"h.{l}.ln_2.bias": (C,), f"h.{l}.attn.c_attn.weight": (C, 3 * C),
                       f"h.{l}.attn.c_attn.bias": (3 * C,), f"h.{l}.attn.c_proj.weight": (C, C),
                       f"h.{l}.attn.c_proj.bias": (C,), f"h.{l}.mlp.c_fc.weight": (C, 4 * C),
                       f"h.{l}.mlp.c_fc.bias": (4 * C,), f"h.{l}.mlp.c_proj.weight": (4 * C, C),
                       f"h.{l}.mlp.c_proj.bias": (C,)})
    return {k: rng.integers(-64, 64, s).astype(np.float64) / 8 for k, s in shapes.items()}


def llmc_flat(t, V, C, L, Vp):
    """The flat float64 buffer of an llm.c model file built from HF tensors by the rules above: wte padded
    with zero rows to Vp, Conv1D weights transposed, per-layer tensors stacked."""
    parts = []
    for name, conv1d in LLMC_ORDER:
        for a in ([t[name]] if name in UNSTACKED else [t[f"h.{l}.{name}"] for l in range(L)]):
            parts.append((a.T if conv1d else a).ravel())
        if name == "wte.weight":
            parts.append(np.zeros((Vp - V) * C))
    return np.concatenate(parts)


def hf_folder(path, tensors, config=None, prefix="transformer."):
    os.makedirs(path)
    entries = [(prefix + k, "F32", a.shape, f32(a)) for k, a in tensors.items()]
    write_file(path / "model.safetensors", st_bytes(entries, metadata={"format": "pt"}))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def test_load_hf_one_layer_one_head_in_llmc_order(tmp_path):
    """A 1-layer, 1-head GPT-2 (V=5 padded to 128, T=3, C=8) as HF stores it, with GPT-2's config.json
    fields: every size 1 is valid, and the parameters come back float32 in llm.c's order and layout."""
    V, maxT, C, L = 5, 3, 8, 1
    t = gpt2_tensors(V, maxT, C, L)
    cfg = {"model_type": "gpt2", "vocab_size": V, "n_positions": maxT, "n_ctx": maxT, "n_embd": C,
           "n_layer": L, "n_head": 1}
    config, flat = load_hf(hf_folder(tmp_path / "hf", t, cfg))
    assert config == GPT2Config(max_seq_len=3, vocab_size=5, padded_vocab_size=128, num_layers=1, num_heads=1,
                                channels=8)
    assert flat.dtype == np.float32
    assert flat.tolist() == llmc_flat(t, V, C, L, 128).tolist()


def test_load_hf_config_without_n_head_uses_64_wide_heads(tmp_path):
    """config.json without n_head (the other fields agree): NH = C / 64 as in every GPT-2, so C=128
    gives 2 heads; with C=8 that is 0 heads, refused in one line."""
    t = gpt2_tensors(5, 3, 128, 1)
    config, _ = load_hf(hf_folder(tmp_path / "a", t, {"model_type": "gpt2", "n_layer": 1}))
    assert (config.num_heads, config.channels) == (2, 128)
    with pytest.raises(UserError, match="n_head=0"):
        load_hf(hf_folder(tmp_path / "b", gpt2_tensors(5, 3, 8, 1), {"n_layer": 1}))


@pytest.mark.parametrize("field, value", [("vocab_size", 6), ("n_positions", 4), ("n_ctx", 4), ("n_embd", 16),
                                          ("n_layer", 2)])
def test_load_hf_config_size_disagreeing_with_the_weights(tmp_path, field, value):
    """Each size config.json gives is checked against the tensors (V=5, T=3, C=8, L=1); n_ctx is the
    context length when n_positions is absent (older GPT-2 configs)."""
    folder = hf_folder(tmp_path / "hf", gpt2_tensors(5, 3, 8, 1), {"n_head": 1, field: value})
    with pytest.raises(UserError, match="says V, maxT, L, C"):
        load_hf(folder)


@pytest.mark.parametrize("value", [0, -3, True, 2.0, "3"])
def test_load_hf_config_n_ctx_not_a_positive_integer(tmp_path, value):
    """n_ctx must be a positive integer even where n_positions (which wins) is right: a bad config.json
    is refused, not half used."""
    folder = hf_folder(tmp_path / "hf", gpt2_tensors(5, 3, 8, 1), {"n_head": 1, "n_positions": 3, "n_ctx": value})
    with pytest.raises(UserError, match="n_ctx is .*not a positive integer"):
        load_hf(folder)


def test_read_weights_takes_an_hf_folder_or_its_safetensors_file(tmp_path):
    """read_weights (what every command loads with) on a hand-built HF folder and on its model.safetensors:
    the same config and parameters, and the file it read is model.safetensors in both cases."""
    t = gpt2_tensors(5, 3, 8, 1)
    folder = hf_folder(tmp_path / "hf", t, {"n_head": 1})
    expected = llmc_flat(t, 5, 8, 1, 128).tolist()
    for path in (folder, folder / "model.safetensors", str(folder / "model.safetensors")):
        config, flat, read = read_weights(path)
        assert (config.num_layers, config.num_heads, config.channels, config.vocab_size) == (1, 1, 8, 5)
        assert flat.tolist() == expected and read == str(folder / "model.safetensors")


# save_hf, files by hand
def test_save_hf_writes_only_its_folder(tmp_path, monkeypatch):
    """save_hf creates the export folder (and its parents) and writes config.json and model.safetensors
    in it, nothing elsewhere (the working folder stays as it was)."""
    monkeypatch.chdir(tmp_path)
    config = GPT2Config.tiny(vocab_size=5, max_seq_len=3, num_layers=1, num_heads=1, channels=8, pad_to=8)
    n = 8 * 8 + 3 * 8 + 1 * (12 * 8 * 8 + 13 * 8) + 2 * 8          # wte (Vp=8) + wpe + one layer + ln_f
    save_hf(str(tmp_path / "deep" / "out"), config, np.zeros(n, np.float32))
    assert os.listdir(tmp_path) == ["deep"] and os.listdir(tmp_path / "deep") == ["out"]
    assert sorted(os.listdir(tmp_path / "deep" / "out")) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------------------------ download
def run_download(args, tmp_path, fake_hub=None, **env):
    import subprocess
    import sys
    environ = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    if fake_hub is not None:
        (tmp_path / "fake").mkdir(exist_ok=True)
        (tmp_path / "fake" / "huggingface_hub.py").write_text(fake_hub)
        environ["PYTHONPATH"] = str(tmp_path / "fake")
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "llmnp.download", *args], capture_output=True, text=True,
                          env=environ, cwd=tmp_path)


FAKE_HUB = '''
import os
class LocalEntryNotFoundError(Exception):
    pass
def hf_hub_download(repo_id, filename):
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise LocalEntryNotFoundError("not in the cache\\nsecond line")
    assert repo_id == "openai-community/gpt2", repo_id
    return os.path.join(os.environ["FAKE_HUB_DIR"], filename)
'''


def test_download_converts_local_and_hub_weights(tmp_path):
    config = dataclasses.replace(TINY, padded_vocab_size=128)
    flat = random_flat(config)
    save_hf(tmp_path / "hf", config, flat)
    r = run_download(["hf", "-o", "out"], tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("gpt2_d2.bin", "gpt2_d2_bf16.bin", "gpt2_tokenizer.bin"):
        assert (tmp_path / "out" / name).exists()
    assert load_model(tmp_path / "out" / "gpt2_d2.bin")[0] == config
    assert np.array_equal(load_model(tmp_path / "out" / "gpt2_d2.bin")[1], flat)
    # "gpt2" through the hub (a stand-in huggingface_hub serving the same folder), online
    r = run_download(["gpt2", "-o", "hub"], tmp_path, FAKE_HUB, HF_HUB_OFFLINE="0", FAKE_HUB_DIR=str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(load_model(tmp_path / "hub" / "gpt2_d2.bin")[1], flat)


def test_download_offline_and_without_huggingface_hub(tmp_path):
    # offline: the hub's host does not answer -> HF_HUB_OFFLINE=1 -> one line, at once
    r = run_download(["gpt2", "-o", "x"], tmp_path, FAKE_HUB, HF_ENDPOINT="http://127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "offline" in r.stderr
    assert not (tmp_path / "x").exists()
    r = run_download(["gpt2"], tmp_path, "raise ImportError('no hub here')")
    assert r.returncode == 1 and "pip install huggingface_hub" in r.stderr and r.stderr.count("\n") == 1
    r = run_download(["gpt3"], tmp_path)
    assert r.returncode == 1 and "gpt2-medium" in r.stderr
