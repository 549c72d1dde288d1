"""Every header field of llm.c's files, read and written with every field a different number, so that
two fields swapped (num_layers and num_heads, B and T, rank and world size, shard and sample) cannot
pass. The expected bytes come from struct, field by field, as llm.c lays them out (LLMC_FACTS 1a-1e);
the other checkpoint tests use configs with num_layers == num_heads, which cannot see such a swap."""
import struct

import numpy as np
import pytest

from llmnp import GPT2Config
from llmnp.checkpoint import load_model, load_state, read_debug_state, save_model, save_state, write_debug_state
from llmnp.data import MT19937, read_shard, shard_num_tokens, write_shard
from llmnp.params import num_parameters

# maxT, V, L, NH, C, Vp, hs = C / NH, 3C, 4C: no two alike
DISTINCT = GPT2Config(max_seq_len=11, vocab_size=37, padded_vocab_size=48, num_layers=3, num_heads=2, channels=10)


def ints(raw, n):
    return list(struct.unpack_from(f"<{n}i", raw, 0))


def flat_of(config, seed=0):
    flat = np.random.default_rng(seed).standard_normal(num_parameters(config)).astype(np.float32)
    flat[config.vocab_size * config.channels:config.padded_vocab_size * config.channels] = 0
    return flat


def hand_count(c):
    """The parameter count from llm.c's table, written out: wte, wpe, then per layer, then lnf."""
    L, C = c.num_layers, c.channels
    per_layer = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C
    return c.padded_vocab_size * C + c.max_seq_len * C + L * per_layer + 2 * C


def test_distinct_config_has_no_two_equal_fields():
    c = DISTINCT
    fields = [c.max_seq_len, c.vocab_size, c.padded_vocab_size, c.num_layers, c.num_heads, c.channels,
              c.channels // c.num_heads]
    assert len(set(fields)) == len(fields)
    assert num_parameters(c) == hand_count(c)


@pytest.mark.parametrize("dtype, version, itemsize", [("float32", 3, 4), ("bfloat16", 5, 2)])
def test_model_header_fields_in_llmc_order(tmp_path, dtype, version, itemsize):
    c = DISTINCT
    path = tmp_path / "m.bin"
    save_model(path, c, flat_of(c), dtype=dtype)
    raw = path.read_bytes()
    # llm.c: [0] magic, [1] version, [2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp, the rest zero
    assert ints(raw, 256) == [20240326, version, 11, 37, 3, 2, 10, 48] + [0] * 248
    assert len(raw) == 1024 + itemsize * hand_count(c)


@pytest.mark.parametrize("version, fmt", [(3, "f"), (5, "H")])
def test_model_header_read_field_by_field(tmp_path, version, fmt):
    c = DISTINCT
    n = hand_count(c)
    head = struct.pack("<256i", 20240326, version, 11, 37, 3, 2, 10, 48, *([0] * 248))
    payload = struct.pack(f"<{n}{fmt}", *([0.5] * n if fmt == "f" else [0x3F00] * n))   # 0x3F00: bf16 0.5
    (tmp_path / "m.bin").write_bytes(head + payload)
    config, flat = load_model(tmp_path / "m.bin")
    assert (config.max_seq_len, config.vocab_size, config.num_layers, config.num_heads, config.channels,
            config.padded_vocab_size) == (11, 37, 3, 2, 10, 48)
    assert flat.shape == (n,) and np.all(flat == 0.5)


def test_debug_state_header_b_and_t(tmp_path):
    c = DISTINCT
    B, T = 2, 5
    rng = np.random.default_rng(1)
    x = rng.integers(0, c.vocab_size, size=(B, T)).astype(np.int32)
    y = rng.integers(0, c.vocab_size, size=(B, T)).astype(np.int32)
    logits = rng.standard_normal((B, T, c.padded_vocab_size)).astype(np.float32)
    grads = flat_of(c, 2)
    write_debug_state(tmp_path / "d.bin", x, y, logits, 1.25, grads, c)
    raw = (tmp_path / "d.bin").read_bytes()
    assert ints(raw, 256) == [20240327, 2, B, T] + [0] * 252
    expected = (struct.pack(f"<{B * T}i", *x.ravel().tolist()) + struct.pack(f"<{B * T}i", *y.ravel().tolist())
                + struct.pack(f"<{B * T * c.vocab_size}f", *logits[..., :c.vocab_size].ravel().tolist())
                + struct.pack("<f", 1.25) + struct.pack(f"<{grads.size}f", *grads.tolist()))
    assert raw[1024:] == expected
    d = read_debug_state(tmp_path / "d.bin", c)
    assert (d["B"], d["T"]) == (B, T)
    assert np.array_equal(d["inputs"], x) and np.array_equal(d["targets"], y)
    assert np.array_equal(d["logits"], logits[..., :c.vocab_size]) and d["loss"] == 1.25
    assert np.array_equal(d["grads"], grads)


def test_training_state_header_every_slot(tmp_path):
    P = 7
    m = np.arange(P, dtype=np.float32) + 0.5
    v = np.arange(P, dtype=np.float32) + 100.25
    loader = {"current_shard_idx": 3, "current_sample_idx": 9}
    save_state(tmp_path / "s.bin", step=17, m=m, v=v, loader_state=loader, rank=2, world_size=5,
               rng_state=0x0123456789ABCDEF, rng_state_last_update=0x00FEDCBA98765432)
    raw = (tmp_path / "s.bin").read_bytes()
    head = ints(raw, 256)
    # [0] magic, [1] version, [2] processes, [3] rank, [4] master weights, [5] shuffle, [10] step,
    # u64 at int slots 20, 22, 30, 32: rng_state, rng_state_last_update, shard, sample
    assert head[:6] == [20240527, 1, 5, 2, 0, 0] and head[10] == 17
    u64 = struct.unpack_from("<128Q", raw, 0)
    assert (u64[10], u64[11], u64[15], u64[16]) == (0x0123456789ABCDEF, 0x00FEDCBA98765432, 3, 9)
    others = [i for i in range(256) if i not in (0, 1, 2, 3, 10, 20, 21, 22, 23, 30, 31, 32, 33)]
    assert all(head[i] == 0 for i in others)
    assert raw[1024:] == struct.pack(f"<{P}f", *m.tolist()) + struct.pack(f"<{P}f", *v.tolist())
    s = load_state(tmp_path / "s.bin", num_parameters=P)
    assert (s["step"], s["world_size"], s["rank"], s["should_shuffle"]) == (17, 5, 2, False)
    assert (s["rng_state"], s["rng_state_last_update"]) == (0x0123456789ABCDEF, 0x00FEDCBA98765432)
    assert (s["loader_state"]["current_shard_idx"], s["loader_state"]["current_sample_idx"]) == (3, 9)
    assert s["loader_state"]["num_processes"] == 5 and s["loader_state"]["rank"] == 2
    assert np.array_equal(s["m"], m) and np.array_equal(s["v"], v) and s["master"] is None


def test_training_state_with_master_and_shuffle_flags(tmp_path):
    P = 5
    m, v, master = (np.full(P, x, np.float32) for x in (1.0, 2.0, 3.0))
    rng = MT19937(44)
    loader = {"current_shard_idx": 1, "current_sample_idx": 4, "should_shuffle": 1,
              "shard_indices": [2, 0, 1], "intra_shard_indices": [5, 3, 0, 1, 4, 2], "rng": rng.state_dict()}
    save_state(tmp_path / "s.bin", step=6, m=m, v=v, master=master, loader_state=loader, rank=1, world_size=3)
    raw = (tmp_path / "s.bin").read_bytes()
    assert ints(raw, 6) == [20240527, 1, 3, 1, 1, 1]
    body = raw[1024 + 3 * 4 * P:]
    assert body[:8 + 12] == struct.pack("<Q3i", 3, 2, 0, 1)
    assert body[20:28 + 24] == struct.pack("<Q6i", 6, 5, 3, 0, 1, 4, 2)
    assert len(body) == 28 + 24 + MT19937.STRUCT_BYTES
    s = load_state(tmp_path / "s.bin", num_parameters=P)
    assert s["should_shuffle"] and np.array_equal(s["master"], master)
    assert s["loader_state"]["shard_indices"] == [2, 0, 1]
    assert s["loader_state"]["intra_shard_indices"] == [5, 3, 0, 1, 4, 2]
    assert (s["loader_state"]["current_shard_idx"], s["loader_state"]["current_sample_idx"]) == (1, 4)


def test_token_shard_header(tmp_path):
    tokens = [7, 65535, 0, 300, 12]
    write_shard(tmp_path / "t.bin", tokens)
    raw = (tmp_path / "t.bin").read_bytes()
    assert ints(raw, 256) == [20240520, 1, 5] + [0] * 253
    assert raw[1024:] == struct.pack("<5H", *tokens)
    assert shard_num_tokens(tmp_path / "t.bin") == 5 and read_shard(tmp_path / "t.bin").tolist() == tokens
