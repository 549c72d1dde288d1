"""llm.c's token shards: the writer the data/ scripts use, the reader, and the training DataLoader.

A shard: 256 int32 header [20240520, version 1, N, 0, ...] then N uint16 tokens (file size 1024 + 2N).

DataLoader, as llm.c's llmc/dataloader.h (dimension letters: B batch rows, T time steps, P processes):
- shards = sorted glob(pattern); every shard must hold at least P*B*T + 1 tokens;
- a sample is a window of P*B*T tokens; a shard of N tokens has floor((N-1) / (P*B*T)) of them;
  process r reads the B*T+1 tokens at r*B*T inside the window: inputs = [0:B*T], targets = [1:B*T+1];
- samples in order, then the next shard; after the last shard a new epoch starts;
- shuffle: one torch-identical mt19937 seeded seed+rank (llm.c: 42+rank). Every epoch start
  Fisher-Yates-permutes the shard order in place (not reset to identity between epochs); every shard
  load permutes a fresh identity order of its samples. Same draws as llm.c, so same batches.
Not here: llm.c's file header and opening files (fileio.py), corpus preparation for the data/
scripts (corpus.py), tokenization (tokenizer.py), HellaSwag files (hellaswag.py).
"""
import contextlib
import glob

import numpy as np

from llmnp.errors import UserError
from llmnp.fileio import HEADER_BYTES, file_size, new_header, open_file, read_header, write_atomic

DATA_MAGIC, DATA_VERSION = 20240520, 1


# ------------------------------------------------------------------------------------- shards
def write_shard(path, tokens):
    """Write token ids (each < 65536, fewer than 2^31) as an llm.c gpt-2 token shard."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size >= 2**31:
        raise ValueError(f"a shard holds a 1-D array of fewer than 2^31 tokens, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token ids must fit in uint16 (0..65535)")
    write_atomic(path, new_header(DATA_MAGIC, DATA_VERSION, tokens.size), tokens.astype("<u2"))


def shard_num_tokens(path):
    """N from a shard's header, after checking magic, version, N and the file size."""
    with open_shard(path) as (_, ntok):
        return ntok


@contextlib.contextmanager
def open_shard(path):
    """`with open_shard(path) as (f, ntok)`: the shard open (open_file) just after its header, with
    its token count checked against the file size; every reader of a shard goes through here."""
    with open_file(path, "token shard") as f:
        header = read_header(f, path, DATA_MAGIC, (DATA_VERSION,), "token shard")
        ntok = int(header[2])
        if ntok <= 0:
            raise UserError(f"{path}: the header says {ntok} tokens: an empty or corrupt token shard")
        size, expected = file_size(f), HEADER_BYTES + 2 * ntok
        if size < expected:
            raise UserError(f"{path}: the header says {ntok:,} tokens, so {expected:,} bytes, but the file "
                            f"has {size:,}: truncated (or not a token shard)")
        if size > expected:
            raise UserError(f"{path}: {size - expected:,} bytes after the {ntok:,} tokens its header "
                            f"announces: corrupt (or not a token shard)")
        yield f, ntok


def read_shard(path):
    """All tokens of a shard as a uint16 array."""
    with open_shard(path) as (f, ntok):
        tokens = np.fromfile(f, dtype="<u2", count=ntok)
    if tokens.size != ntok:
        raise UserError(f"{path}: the file ended after {tokens.size:,} of {ntok:,} tokens (changed while read?)")
    return tokens.astype(np.uint16)


# --------------------------------------------------------------------------- llm.c's mt19937
class MT19937:
    """llm.c's llmc/rand.h Mersenne Twister (numerically torch's): randint32() after seeding with
    `seed` gives the same numbers as `torch.manual_seed(seed)`. NumPy's MT19937 bit generator does
    the work (same twist and tempering); seeding is init_genrand, which RandomState(seed) uses.

    State, as llm.c's mt19937_state: `left` and `next` in place of NumPy's `pos`. llm.c decrements
    `left` before drawing and twists when it reaches 0, then reads state[next++]; so next = pos and
    left = 625 - pos, except right after seeding (left 1, next 0, NumPy pos 624).
    """

    N = 624
    STRUCT_BYTES = 8 + 4 + 4 + 4 * 624 + 8      # u64 seed, int left, uint next, uint32 state[624], MATRIX_A[2]
    MATRIX_A = (0x0, 0x9908B0DF)

    def __init__(self, seed):
        self.seed = int(seed)
        key = np.random.RandomState(self.seed & 0xFFFFFFFF).get_state()[1]   # init_genrand(seed)
        self._bitgen = np.random.MT19937()
        self._set(key, pos=self.N)
        self._fresh = True

    def _set(self, key, pos):
        self._bitgen.state = {"bit_generator": "MT19937",
                              "state": {"key": np.asarray(key, dtype=np.uint32), "pos": int(pos)}}

    def randint32(self, n):
        """The next n 32-bit draws (uint64 array)."""
        if n > 0:
            self._fresh = False
        return self._bitgen.random_raw(n)

    def permute(self, a):
        """llm.c's random_permutation: Fisher-Yates in place, i = n-1..1, j = randint32 % (i+1)."""
        n = len(a)
        if n < 2:
            return a
        i = np.arange(n - 1, 0, -1, dtype=np.uint64)
        j = (self.randint32(n - 1) % (i + np.uint64(1))).tolist()
        for ii, jj in zip(i.tolist(), j):
            a[ii], a[jj] = a[jj], a[ii]
        return a

    def state_dict(self):
        st = self._bitgen.state["state"]
        pos = int(st["pos"])
        return {"seed": self.seed, "left": self.N + 1 - pos, "next": 0 if self._fresh else pos,
                "state": [int(x) for x in st["key"]]}

    def load_state_dict(self, d):
        left, nxt = int(d["left"]), int(d["next"])
        if not 1 <= left <= self.N or len(d["state"]) != self.N:
            raise UserError(f"corrupt mt19937 state (left={left}, {len(d['state'])} state words)")
        self.seed = int(d["seed"])
        self._set(d["state"], pos=self.N + 1 - left)
        self._fresh = left == 1 and nxt == 0

    def to_bytes(self):
        """The raw 2520-byte mt19937_state struct llm.c writes into its training-state file."""
        d = self.state_dict()
        return (np.array([d["seed"] & (2**64 - 1)], "<u8").tobytes()
                + np.array([d["left"]], "<i4").tobytes() + np.array([d["next"]], "<u4").tobytes()
                + np.array(d["state"], "<u4").tobytes() + np.array(self.MATRIX_A, "<u4").tobytes())

    @classmethod
    def from_bytes(cls, raw):
        if len(raw) != cls.STRUCT_BYTES:
            raise UserError(f"mt19937 state has {len(raw)} bytes, expected {cls.STRUCT_BYTES}")
        seed = int(np.frombuffer(raw, "<u8", 1, 0)[0])
        left, nxt = int(np.frombuffer(raw, "<i4", 1, 8)[0]), int(np.frombuffer(raw, "<u4", 1, 12)[0])
        state = np.frombuffer(raw, "<u4", cls.N, 16).tolist()
        rng = cls(0)
        rng.load_state_dict({"seed": seed, "left": left, "next": nxt, "state": state})
        return rng


# ------------------------------------------------------------------------------- the loader
class DataLoader:
    """Batches of (inputs, targets), int32 (B, T) each, from the shards matching `pattern`, this
    process's share of them (rank of world_size), optionally shuffled as llm.c shuffles.

    num_tokens: tokens in all shards; num_batches: batches per epoch for this process.
    state_dict() / load_state_dict() save and restore the position (and the shuffle state), with
    llm.c's field names: the training-state file (checkpoint.save_state) stores exactly these.
    """

    def __init__(self, pattern, B, T, rank=0, world_size=1, shuffle=False, seed=42, vocab_size=50257):
        if B < 1 or T < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad loader settings B={B} T={T} rank={rank} world_size={world_size}")
        self.pattern, self.B, self.T = pattern, B, T
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.vocab_size = bool(shuffle), vocab_size
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise UserError(f"no files match {pattern!r}"
                            + (" (run `python data/tinyshakespeare.py`, or train on the default corpus)"
                               if "tinyshakespeare" in pattern else ""))
        self.window = world_size * B * T             # tokens of one sample, all processes
        self.shard_tokens = [shard_num_tokens(f) for f in self.files]
        for f, n in zip(self.files, self.shard_tokens):
            if n < self.window + 1:
                raise UserError(f"{f} holds {n} tokens, one batch needs world_size*B*T+1 = "
                                f"{self.window + 1}: use a smaller batch size or sequence length")
        self.num_tokens = sum(self.shard_tokens)
        self.num_batches = sum((n - 1) // self.window for n in self.shard_tokens)
        self._check_token_ids()
        self._tokens = None
        self.rng = MT19937(seed + rank) if self.shuffle else None
        self.shard_indices = list(range(len(self.files)))
        self.intra_shard_indices = None
        self.reset()

    def _check_token_ids(self, block=1 << 26):
        """Every token of every shard below vocab_size, checked now, so that data made for another
        tokenizer stops a run before its first step, not when a later shard comes up."""
        from tqdm import tqdm
        with tqdm(total=self.num_tokens, unit="tok", unit_scale=True, desc=f"checking token ids < {self.vocab_size}",
                  disable=self.num_tokens < 20 * block or self.rank != 0) as bar:
            for path, ntok in zip(self.files, self.shard_tokens):
                with open_shard(path) as (f, _):
                    tokens = np.memmap(f, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
                    for start in range(0, ntok, block):
                        top = int(tokens[start:start + block].max())
                        if top >= self.vocab_size:
                            raise UserError(f"{path} holds token id {top}, not below the model's vocabulary "
                                            f"size {self.vocab_size} (data made for another tokenizer?)")
                        bar.update(min(block, ntok - start))

    # -- llm.c's dataloader_reset / _advance / _load_shard / next_batch
    def reset(self):
        """Back to the first sample of the first shard; with shuffling, a new epoch's permutations."""
        self.current_shard_idx = 0
        self.current_sample_idx = 0                  # the next sample to read
        if self.shuffle:
            self.rng.permute(self.shard_indices)
        self._load_shard(self.current_shard_idx)
        if self.shuffle:
            self._prepare_intra_shard_indices()

    def _advance(self):
        if self.current_shard_idx == len(self.files) - 1:
            self.reset()                             # new epoch
            return
        self.current_shard_idx += 1
        self.current_sample_idx = 0
        self._load_shard(self.current_shard_idx)
        if self.shuffle:
            self._prepare_intra_shard_indices()

    def _load_shard(self, shard_idx):
        file_idx = self.shard_indices[shard_idx] if self.shuffle else shard_idx
        path, ntok = self.files[file_idx], self.shard_tokens[file_idx]
        with open_shard(path) as (f, ntok_now):
            if ntok_now != ntok:
                raise UserError(f"{path} now holds {ntok_now:,} tokens, {ntok:,} when training started: "
                                f"the shard changed during the run")
            self._tokens = np.memmap(f, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
        self.shard_num_samples = (ntok - 1) // self.window

    def _prepare_intra_shard_indices(self):
        self.intra_shard_indices = self.rng.permute(list(range(self.shard_num_samples)))

    def next_batch(self):
        """(inputs, targets): int32 (B, T) each; targets are inputs shifted by one token."""
        if self.current_sample_idx >= self.shard_num_samples:
            self._advance()
        i = self.current_sample_idx
        idx = self.intra_shard_indices[i] if self.shuffle else i
        start = idx * self.window + self.rank * self.B * self.T
        buf = np.asarray(self._tokens[start:start + self.B * self.T + 1], dtype=np.int32)
        self.current_sample_idx += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    # -- position, for checkpoints
    def state_dict(self):
        """Plain ints and lists (JSON-able): what llm.c's state file keeps of its DataLoader."""
        d = {"num_processes": self.world_size, "rank": self.rank, "should_shuffle": int(self.shuffle),
             "current_shard_idx": self.current_shard_idx, "current_sample_idx": self.current_sample_idx}
        if self.shuffle:
            d["shard_indices"] = list(self.shard_indices)
            d["intra_shard_indices"] = list(self.intra_shard_indices)
            d["rng"] = self.rng.state_dict()
        return d

    def load_state_dict(self, d):
        """Continue exactly where state_dict() was taken (same shards, B, T, processes)."""
        if int(d.get("should_shuffle", 0)) != int(self.shuffle):
            raise UserError(f"saved loader state has shuffle={bool(d.get('should_shuffle'))}, this loader "
                            f"has shuffle={self.shuffle}")
        for key, mine in (("num_processes", self.world_size), ("rank", self.rank)):
            if key in d and int(d[key]) != mine:
                raise UserError(f"saved loader state has {key}={d[key]}, this loader has {mine}")
        shard = int(d["current_shard_idx"])
        if not 0 <= shard < len(self.files):
            raise UserError(f"saved loader state points at shard {shard}, {self.pattern!r} has "
                            f"{len(self.files)} shards")
        if self.shuffle:
            if sorted(d["shard_indices"]) != list(range(len(self.files))):
                raise UserError(f"saved loader state is for {len(d['shard_indices'])} shards, "
                                f"{self.pattern!r} has {len(self.files)}")
            self.shard_indices = [int(i) for i in d["shard_indices"]]
        self.current_shard_idx = shard
        self._load_shard(shard)
        if self.shuffle:
            intra = [int(i) for i in d["intra_shard_indices"]]
            if len(intra) != self.shard_num_samples:
                raise UserError(f"saved loader state has {len(intra)} samples in shard {shard}, the "
                                f"shard now holds {self.shard_num_samples} (different B, T or data?)")
            self.intra_shard_indices = intra
            self.rng.load_state_dict(d["rng"])
        self.current_sample_idx = int(d["current_sample_idx"])
        if not 0 <= self.current_sample_idx <= self.shard_num_samples:
            raise UserError(f"saved loader state points at sample {self.current_sample_idx}, shard "
                            f"{shard} has {self.shard_num_samples} (different B, T or data?)")
