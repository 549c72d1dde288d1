"""Token shards byte for byte, llm.c's mt19937 and DataLoader (order, rank split, shuffle, resume),
the eval-file format, the shard packer, the offline default corpus."""
import json
import os
import struct

import numpy as np
import pytest

from llmnp import corpus, data
from llmnp.corpus import ShardWriter, default_corpus
from llmnp.data import MT19937, DataLoader, read_shard, shard_num_tokens, write_shard
from llmnp.errors import UserError
from llmnp.hellaswag import read_examples, write_eval_file


# ---------------------------------------------------------------- independent references (struct, pure Python)
def struct_shard(tokens, magic=20240520, version=1):
    return struct.pack("<256i", magic, version, len(tokens), *([0] * 253)) + struct.pack(f"<{len(tokens)}H", *tokens)


class RefMT:
    """llmc/rand.h transcribed: manual_seed, next_state, randint32, with its left/next fields."""

    def __init__(self, seed):
        self.state = [seed & 0xFFFFFFFF]
        for j in range(1, 624):
            prev = self.state[-1]
            self.state.append((1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF)
        self.left, self.next = 1, 0

    def _next_state(self):
        s, mag = self.state, (0, 0x9908B0DF)
        self.left, self.next = 624, 0
        for j in range(624):
            y = (s[j] & 0x80000000) | (s[(j + 1) % 624] & 0x7FFFFFFF)
            s[j] = s[(j + 397) % 624] ^ (y >> 1) ^ mag[y & 1]

    def randint32(self):
        self.left -= 1
        if self.left <= 0:
            self._next_state()
        y = self.state[self.next]
        self.next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def permute(self, a):
        for i in range(len(a) - 1, 0, -1):
            j = self.randint32() % (i + 1)
            a[i], a[j] = a[j], a[i]


class RefLoader:
    """llmc/dataloader.h's DataLoader transcribed, on in-memory token lists."""

    def __init__(self, shards, B, T, rank, nproc, shuffle):
        self.shards, self.B, self.T, self.rank, self.nproc, self.shuffle = shards, B, T, rank, nproc, shuffle
        if shuffle:
            self.rng = RefMT(42 + rank)
            self.shard_indices = list(range(len(shards)))
        self.reset()

    def load(self, i):
        self.tokens = self.shards[self.shard_indices[i] if self.shuffle else i]
        self.num_samples = (len(self.tokens) - 1) // (self.nproc * self.B * self.T)

    def intra(self):
        self.intra_indices = list(range(self.num_samples))
        self.rng.permute(self.intra_indices)

    def reset(self):
        self.shard, self.sample = 0, 0
        if self.shuffle:
            self.rng.permute(self.shard_indices)
        self.load(0)
        if self.shuffle:
            self.intra()

    def next_batch(self):
        if self.sample >= self.num_samples:
            if self.shard == len(self.shards) - 1:
                self.reset()
            else:
                self.shard, self.sample = self.shard + 1, 0
                self.load(self.shard)
                if self.shuffle:
                    self.intra()
        idx = self.intra_indices[self.sample] if self.shuffle else self.sample
        start = idx * self.nproc * self.B * self.T + self.rank * self.B * self.T
        buf = self.tokens[start:start + self.B * self.T + 1]
        self.sample += 1
        return buf[:-1], buf[1:]


# ------------------------------------------------------------------------------------------ shards
def test_shard_byte_exact_and_round_trip(tmp_path):
    tokens = [0, 1, 50256, 65535, 7, 7]
    write_shard(tmp_path / "a.bin", tokens)
    assert (tmp_path / "a.bin").read_bytes() == struct_shard(tokens)
    (tmp_path / "b.bin").write_bytes(struct_shard(tokens))
    got = read_shard(tmp_path / "b.bin")
    assert got.dtype == np.uint16 and got.tolist() == tokens
    assert shard_num_tokens(tmp_path / "b.bin") == 6
    with pytest.raises(ValueError):
        write_shard(tmp_path / "c.bin", [70000])


@pytest.mark.parametrize("raw, message", [
    (struct_shard([1, 2, 3], magic=20240801), "bad magic"),
    (struct_shard([1, 2, 3], version=7), "version 7"),
    (struct_shard([1, 2, 3])[:-1], "truncated"),
    (struct_shard([1, 2, 3])[:500], "truncated"),
])
def test_bad_shards(tmp_path, raw, message):
    (tmp_path / "x.bin").write_bytes(raw)
    with pytest.raises(UserError, match=message):
        read_shard(tmp_path / "x.bin")
    with pytest.raises(UserError, match=message):
        DataLoader(str(tmp_path / "x.bin"), 1, 1, vocab_size=10)


def test_loader_errors(tmp_path):
    with pytest.raises(UserError, match="no files match"):
        DataLoader(str(tmp_path / "*.bin"), 2, 4)
    with pytest.raises(UserError, match="not found"):
        read_shard(tmp_path / "missing.bin")
    write_shard(tmp_path / "short.bin", np.arange(8))
    with pytest.raises(UserError, match="world_size\\*B\\*T\\+1 = 9"):
        DataLoader(str(tmp_path / "short.bin"), 2, 4, vocab_size=100)
    DataLoader(str(tmp_path / "short.bin"), 1, 7, vocab_size=100)          # 8 tokens = one 7+1 window


@pytest.mark.parametrize("where", [0, 3, 4, 9])
def test_a_token_id_too_large_is_found_anywhere(tmp_path, where):
    """Any position: the first and last token, and either side of the check's block edge (block=4)."""
    tokens = [1] * 10
    tokens[where] = 99
    write_shard(tmp_path / "a.bin", [2] * 10)
    write_shard(tmp_path / "b.bin", tokens)                    # the second shard: every shard is checked
    loader = DataLoader.__new__(DataLoader)
    loader.files, loader.shard_tokens, loader.num_tokens = [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")], [10, 10], 20
    loader.vocab_size, loader.rank = 99, 0
    with pytest.raises(UserError, match="b.bin holds token id 99"):
        loader._check_token_ids(block=4)
    loader.vocab_size = 100
    loader._check_token_ids(block=4)
    with pytest.raises(UserError, match="token id 99"):
        DataLoader(str(tmp_path / "*.bin"), 1, 2, vocab_size=99)


def test_write_shard_refuses_what_a_shard_cannot_hold(tmp_path):
    """A shard is a flat run of uint16 ids: a 2-D array is refused (not flattened into a shard), and
    65536, the first id past uint16, is refused (not wrapped to 0); nothing is written either time."""
    with pytest.raises(ValueError):
        write_shard(tmp_path / "a.bin", np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        write_shard(tmp_path / "b.bin", [1, 65536, 2])
    assert os.listdir(tmp_path) == []


def test_write_shard_refuses_2_31_tokens_at_once(tmp_path, monkeypatch):
    """The header's token count is an int32, so 2^31 tokens (the first count it cannot hold) are refused
    with ValueError before anything else. The array is a zero-copy broadcast (no 4 GiB in memory), and
    writing is stubbed to fail loudly, so that a broken size check cannot fill the disk."""
    def no_write(*args):
        raise AssertionError("write_shard went on to write 2^31 tokens")
    monkeypatch.setattr(data, "write_atomic", no_write)
    with pytest.raises(ValueError):
        write_shard(tmp_path / "big.bin", np.broadcast_to(np.uint16(1), (2**31,)))


def test_read_shard_reads_the_count_in_its_header_even_if_the_file_grows(tmp_path, monkeypatch):
    """read_shard reads exactly the N tokens the header announces: a writer appending to the shard after
    its size was checked (simulated by appending inside the size check) changes nothing it returns."""
    path = tmp_path / "a.bin"
    path.write_bytes(struct_shard([5, 6, 7]))
    real_size = data.file_size

    def size_then_append(f):
        size = real_size(f)
        with open(path, "ab") as g:
            g.write(struct.pack("<2H", 8, 9))
        return size
    monkeypatch.setattr(data, "file_size", size_then_append)
    assert read_shard(path).tolist() == [5, 6, 7]


def test_token_id_check_reads_the_count_in_the_header_even_if_the_file_grows(tmp_path, monkeypatch):
    """The id check looks at exactly the N tokens a shard's header announces (the ones the loader reads):
    an id past the vocabulary appended after the size check (simulated inside the size check) is not
    one of them and does not stop the run."""
    path = tmp_path / "a.bin"
    path.write_bytes(struct_shard([1] * 10))
    real_size = data.file_size

    def size_then_append(f):
        size = real_size(f)
        with open(path, "ab") as g:
            g.write(struct.pack("<H", 999))
        return size
    monkeypatch.setattr(data, "file_size", size_then_append)
    loader = DataLoader.__new__(DataLoader)
    loader.files, loader.shard_tokens, loader.num_tokens = [str(path)], [10], 10
    loader.vocab_size, loader.rank = 100, 0
    loader._check_token_ids(block=4)


# ------------------------------------------------------------------------------------------ mt19937
def test_mt19937_struct_holds_the_seed_as_a_u64():
    """The state struct's u64 seed_ field holds the seed (checkpoint.py's format note; llm.c itself leaves
    it unset): 1337 in full, not cut to its low bits, and -1 as the u64 2^64-1 (torch's remapping of a
    negative seed), whose draws are those of seed 2^32-1 (init_genrand takes the low 32 bits). Expected
    structs from struct.pack and the pure-Python RefMT."""
    for seed, field, low32 in ((1337, 1337, 1337), (-1, 2**64 - 1, 2**32 - 1)):
        ref = RefMT(low32)
        raw = MT19937(seed).to_bytes()
        assert raw == struct.pack("<QiI624I2I", field, 1, 0, *ref.state, 0, 0x9908B0DF)
        assert MT19937.from_bytes(raw).state_dict()["seed"] == field


@pytest.mark.parametrize("left, words", [(1, 623), (0, 624), (625, 624), (1, 625)])
def test_mt19937_state_with_a_bad_field_is_refused(left, words):
    """load_state_dict refuses a state whose `left` is outside 1..624 or whose word count is not 624,
    each on its own (one bad field is enough), with a UserError rather than NumPy's own error."""
    with pytest.raises(UserError, match="corrupt mt19937 state"):
        MT19937(0).load_state_dict({"seed": 0, "left": left, "next": 0, "state": [5] * words})


def test_mt19937_matches_torch_and_llmc_state():
    # the sequence llmc/rand.h documents for torch.manual_seed(137)
    assert MT19937(137).randint32(5).tolist() == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
    ref, rng = RefMT(42), MT19937(42)
    for n in (0, 1, 622, 1, 1, 700, 624, 3):
        draws = rng.randint32(n).tolist()
        assert draws == [ref.randint32() for _ in range(n)]
        d = rng.state_dict()
        assert (d["left"], d["next"], d["state"]) == (ref.left, ref.next, ref.state)
        # the raw struct of llm.c's state file, and back
        raw = rng.to_bytes()
        assert raw == struct.pack("<QiI624I2I", 42, ref.left, ref.next, *ref.state, 0, 0x9908B0DF)
        twin = MT19937.from_bytes(raw)
        assert twin.state_dict() == d
        assert twin.randint32(5).tolist() == MT19937.from_bytes(raw).randint32(5).tolist()
    twin = MT19937(1)
    twin.load_state_dict(json.loads(json.dumps(rng.state_dict())))
    assert twin.randint32(1000).tolist() == rng.randint32(1000).tolist()


# ------------------------------------------------------------------------------------------ loader
def make_shards(tmp_path, sizes, V=1000, seed=0):
    rng = np.random.default_rng(seed)
    shards = []
    for i, n in enumerate(sizes):
        toks = rng.integers(0, V, n)
        write_shard(tmp_path / f"s_{i:03d}.bin", toks)
        shards.append(toks.tolist())
    return str(tmp_path / "s_*.bin"), shards


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("nproc", [1, 3])
def test_loader_matches_llmc(tmp_path, shuffle, nproc):
    pattern, shards = make_shards(tmp_path, [97, 160, 61, 130])
    B, T = 2, 4
    for rank in range(nproc):
        loader = DataLoader(pattern, B, T, rank=rank, world_size=nproc, shuffle=shuffle, vocab_size=1000)
        ref = RefLoader(shards, B, T, rank, nproc, shuffle)
        assert loader.num_tokens == sum(map(len, shards))
        assert loader.num_batches == sum((len(s) - 1) // (nproc * B * T) for s in shards)
        for _ in range(3 * loader.num_batches + 2):                        # three epochs and a bit
            x, y = loader.next_batch()
            rx, ry = ref.next_batch()
            assert x.dtype == np.int32 and x.shape == (B, T) and y.shape == (B, T)
            assert x.ravel().tolist() == rx and y.ravel().tolist() == ry


def test_ranks_split_without_overlap(tmp_path):
    pattern, shards = make_shards(tmp_path, [200, 150])
    B, T, P = 2, 3, 4
    seen = []
    for rank in range(P):
        loader = DataLoader(pattern, B, T, rank=rank, world_size=P, vocab_size=1000)
        for _ in range(loader.num_batches):
            seen.append(loader.next_batch()[0])
    # per shard, the windows of all ranks tile the first samples*P*B*T tokens exactly once
    stream = np.concatenate([np.array(s[:(len(s) - 1) // (P * B * T) * P * B * T]) for s in shards])
    n = len(seen) // P
    by_step = [np.concatenate([seen[r * n + i].ravel() for r in range(P)]) for i in range(n)]
    assert np.array_equal(np.concatenate(by_step), stream)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume(tmp_path, shuffle):
    pattern, _ = make_shards(tmp_path, [97, 160, 61])
    a = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=7, vocab_size=1000)
    for k in (0, 5, 13, 30):
        a.reset() if k == 0 else None
        for _ in range(k):
            a.next_batch()
        state = json.loads(json.dumps(a.state_dict()))                     # JSON-able
        b = DataLoader(pattern, 2, 4, shuffle=shuffle, seed=7, vocab_size=1000)
        b.next_batch()                                                     # somewhere else first
        b.load_state_dict(state)
        for _ in range(25):
            xa, ya = a.next_batch()
            xb, yb = b.next_batch()
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    if shuffle:
        c = DataLoader(pattern, 2, 4, shuffle=False, vocab_size=1000)
        with pytest.raises(UserError, match="shuffle"):
            c.load_state_dict(state)
        d = DataLoader(pattern, 1, 4, shuffle=True, seed=7, vocab_size=1000)
        with pytest.raises(UserError):
            d.load_state_dict(state)


def test_shuffle_reproducible_and_different_per_rank(tmp_path):
    pattern, _ = make_shards(tmp_path, [300, 300])
    first = lambda **kw: [DataLoader(pattern, 2, 4, vocab_size=1000, **kw).next_batch()[0].tolist() for _ in range(1)]
    assert first(shuffle=True, seed=3) == first(shuffle=True, seed=3)
    assert first(shuffle=True, seed=3) != first(shuffle=True, seed=4)


# ------------------------------------------------------------------------------------------ loader state
def hand_shards(tmp_path, sizes, seed=1):
    """Shards written with struct (not write_shard); returns the glob and the token lists."""
    rng = np.random.default_rng(seed)
    shards = [rng.integers(0, 1000, n).tolist() for n in sizes]
    for i, toks in enumerate(shards):
        (tmp_path / f"h_{i:02d}.bin").write_bytes(struct_shard(toks))
    return str(tmp_path / "h_*.bin"), shards


def test_loader_state_without_the_shuffle_flag_is_an_unshuffled_one(tmp_path):
    """A saved loader state without `should_shuffle` counts as unshuffled: an unshuffled loader resumes
    from it at the saved sample, a shuffling loader refuses it. Expected batch from the token list:
    sample 3 of shard 0 is tokens [3*B*T, 4*B*T]."""
    pattern, shards = hand_shards(tmp_path, [41, 33])
    B, T = 2, 4
    state = {"current_shard_idx": 0, "current_sample_idx": 3}
    loader = DataLoader(pattern, B, T, vocab_size=1000)
    loader.load_state_dict(dict(state))
    x, y = loader.next_batch()
    assert x.ravel().tolist() == shards[0][24:32] and y.ravel().tolist() == shards[0][25:33]
    with pytest.raises(UserError, match="shuffle"):
        DataLoader(pattern, B, T, shuffle=True, vocab_size=1000).load_state_dict(dict(state))


@pytest.mark.parametrize("saved, mine", [((2, 0), (1, 0)), ((2, 1), (2, 0)), ((3, 2), (3, 1))])
def test_loader_state_of_another_process_layout_is_refused(tmp_path, saved, mine):
    """A state saved by process `rank` of `num_processes` loads only into the same process of the same
    number: the other process count alone (same rank 0), or the other rank alone, is refused."""
    pattern, _ = hand_shards(tmp_path, [3 * 2 * 4 + 1, 3 * 2 * 4 + 1])
    (P, rank), (P2, rank2) = saved, mine
    state = DataLoader(pattern, 2, 4, rank=rank, world_size=P, vocab_size=1000).state_dict()
    with pytest.raises(UserError, match="saved loader state has (num_processes|rank)="):
        DataLoader(pattern, 2, 4, rank=rank2, world_size=P2, vocab_size=1000).load_state_dict(state)


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_state_past_the_last_shard_is_refused(tmp_path, shuffle):
    """current_shard_idx must name a shard: the number of shards (one past the last) is refused with a
    UserError, not an IndexError."""
    pattern, _ = hand_shards(tmp_path, [41, 33])
    loader = DataLoader(pattern, 2, 4, shuffle=shuffle, vocab_size=1000)
    state = loader.state_dict()
    state["current_shard_idx"] = 2
    with pytest.raises(UserError, match="points at shard 2"):
        DataLoader(pattern, 2, 4, shuffle=shuffle, vocab_size=1000).load_state_dict(state)


def test_loader_resumes_from_the_end_of_a_shard(tmp_path):
    """A state taken right after a shard's last sample (current_sample_idx == its number of samples, as
    state_dict gives it then) is legal; the next batch is the first window of the next shard. Shard 0 of
    41 tokens holds (41-1)//8 = 5 samples."""
    pattern, shards = hand_shards(tmp_path, [41, 33])
    a = DataLoader(pattern, 2, 4, vocab_size=1000)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    assert (state["current_shard_idx"], state["current_sample_idx"]) == (0, 5)
    b = DataLoader(pattern, 2, 4, vocab_size=1000)
    b.load_state_dict(state)
    x, y = b.next_batch()
    assert x.ravel().tolist() == shards[1][0:8] and y.ravel().tolist() == shards[1][1:9]


@pytest.mark.parametrize("B, T, rank, world_size", [(0, 4, 0, 1), (2, 0, 0, 1), (2, 4, 1, 1), (2, 4, 3, 3),
                                                    (2, 4, -1, 2)])
def test_loader_refuses_bad_settings_each_alone(tmp_path, B, T, rank, world_size):
    """B < 1, T < 1, and a rank outside 0..world_size-1 are each refused on their own with a UserError
    (not a division by zero, not a process reading another's windows), on shards that would do otherwise."""
    pattern, _ = hand_shards(tmp_path, [200, 200])
    with pytest.raises(UserError, match="bad loader settings"):
        DataLoader(pattern, B, T, rank=rank, world_size=world_size, vocab_size=1000)


def test_loader_default_vocabulary_is_gpt2s(tmp_path):
    """Without vocab_size the loader checks ids against GPT-2's vocabulary of 50257 tokens: 50256 (EOT)
    is the largest id accepted, 50257 is refused."""
    (tmp_path / "a.bin").write_bytes(struct_shard([50256] * 9))
    DataLoader(str(tmp_path / "a.bin"), 2, 4)
    (tmp_path / "b.bin").write_bytes(struct_shard([50256] * 8 + [50257]))
    with pytest.raises(UserError, match="token id 50257"):
        DataLoader(str(tmp_path / "b.bin"), 2, 4)


# ------------------------------------------------------------------------------------------ eval file
def struct_eval_file(examples):
    body, longest = b"", 0
    for i, ex in enumerate(examples):
        words = [i, ex["label"], 4, len(ex["ctx_tokens"]), *ex["ctx_tokens"]]
        for e in ex["ending_tokens"]:
            words += [len(e), *e]
        nbytes = 2 * (len(words) + 2)
        longest = max(longest, nbytes)
        body += struct.pack(f"<{len(words) + 2}H", 65535, nbytes, *words)
    return struct.pack("<256i", 20240522, 1, len(examples), longest, *([0] * 252)) + body


def test_eval_file_byte_exact(tmp_path):
    examples = [{"label": 3, "ctx_tokens": [10, 11, 12], "ending_tokens": [[1], [2, 3], [4, 5, 6], [7]]},
                {"label": 0, "ctx_tokens": [50256], "ending_tokens": [[9, 9], [8], [7], [6, 5, 4, 3]]}]
    write_eval_file(tmp_path / "e.bin", examples)
    assert (tmp_path / "e.bin").read_bytes() == struct_eval_file(examples)
    got = read_examples(tmp_path / "e.bin")                                # hellaswag.py's reader
    assert [(e.label, e.context, e.endings) for e in got] == [
        (ex["label"], ex["ctx_tokens"], ex["ending_tokens"]) for ex in examples]


# ------------------------------------------------------------------------------------------ writers
def test_shard_writer_packs_documents(tmp_path):
    docs = [np.arange(k, k + n) for k, n in [(0, 7), (100, 3), (200, 12), (300, 1)]]
    w = ShardWriter(str(tmp_path), "toy", shard_size=5, progress=False)
    for d in docs:
        w.add(d)
    paths = w.close()
    assert [os.path.basename(p) for p in paths] == ["toy_val_000000.bin"] + [f"toy_train_{i:06d}.bin" for i in range(1, 5)]
    assert np.array_equal(np.concatenate([read_shard(p) for p in paths]), np.concatenate(docs))
    assert [shard_num_tokens(p) for p in paths] == [5, 5, 5, 5, 3]


def test_default_corpus(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, val = default_corpus()
    assert (train, val) == (os.path.join("dev", "data", "tinyshakespeare", "tiny_shakespeare_train.bin"),
                            os.path.join("dev", "data", "tinyshakespeare", "tiny_shakespeare_val.bin"))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "shakespeare.txt" in out
    assert default_corpus() == (train, val) and capsys.readouterr().out == ""   # made once
    assert shard_num_tokens(val) == 32768 and shard_num_tokens(train) > 200_000
    x, y = DataLoader(val, 4, 64).next_batch()
    assert x[0, 0] == 50256 and np.array_equal(x[0, 1:], y[0, :-1])       # a speech starts with EOT
    # llm.c's tinyshakespeare.py tokenization, the long way: EOT + each "\n\n"-separated section
    from llmnp.tokenizer import EOT, encode
    text = open(corpus.CORPUS_TEXT, encoding="utf-8").read()[:20000]
    sections = text.split("\n\n")
    expected = []
    for i, s in enumerate(sections):
        expected += [EOT] + encode(s + ("\n\n" if i < len(sections) - 1 else ""))
    val_part, train_part = corpus.tokenize_tinyshakespeare(text)
    assert np.concatenate([val_part, train_part]).tolist() == expected
