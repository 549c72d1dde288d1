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
Also here, for the data/ scripts: llm.c's HellaSwag eval-file writer, the shard packer, the downloader;
and default_corpus(), the offline corpus the README's first command trains on.

Not here: tokenization (tokenizer.py), reading and scoring HellaSwag files (hellaswag.py).
"""
import contextlib
import glob
import os
import re
import stat

import numpy as np

from llmnp.errors import UserError
from llmnp.fileio import check_writable, io_error, make_dir, write_atomic

HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS
DATA_MAGIC, DATA_VERSION = 20240520, 1
EVAL_MAGIC, EVAL_VERSION = 20240522, 1
EVAL_START = 65535                # <START_EXAMPLE> delimiter of the eval file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_TEXT = os.path.join(REPO_ROOT, "data", "shakespeare.txt")
TINYSHAKESPEARE_DIR = os.path.join("dev", "data", "tinyshakespeare")   # llm.c's default, cwd-relative
TINYSHAKESPEARE_VAL_TOKENS = 32768


# ------------------------------------------------------------------------- headers (all formats)
def open_file(path, what):
    """open(path, "rb") for a reader of a user's file, or one UserError line saying why not: missing,
    a folder, a named pipe, device or socket (reading one can block forever: it is refused before it
    is opened, and opened without blocking in case it was swapped in meanwhile), no permission.
    Every reader goes through here and takes sizes from the open file (file_size), not the path."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise io_error(path, e, f"read the {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file: give the file itself")
    return os.fdopen(fd, "rb")


def _file_kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def file_size(f):
    """Size in bytes of the open file f (from open_file)."""
    return os.fstat(f.fileno()).st_size


def read_header(f, path, magic, versions, what):
    """The 256-int32 header of an llm.c file, magic and version checked: an int64 array."""
    raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: truncated {what} ({len(raw)} bytes, the header alone is {HEADER_BYTES})")
    header = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if header[0] != magic:
        raise UserError(f"{path}: bad magic {header[0]}, not a {what} (its magic is {magic})")
    if header[1] not in versions:
        raise UserError(f"{path}: {what} version {header[1]} is not supported "
                        f"(supported: {', '.join(map(str, versions))})")
    return header


def new_header(*fields):
    """256 little-endian int32: the given leading fields, then zeros."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:len(fields)] = fields
    return header


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


# ------------------------------------------------------------------------ for the data/ scripts
def shard_paths(out_dir, prefix):
    """The llm.c-named shards {prefix}_{val|train}_NNNNNN.bin already in out_dir, sorted."""
    pattern = re.compile(re.escape(prefix) + r"_(val|train)_\d{6}\.bin")
    return sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir) if pattern.fullmatch(f)) \
        if os.path.isdir(out_dir) else []


def start_shards(out_dir, prefix):
    """Make out_dir ready for a new set of {prefix}_* shards: created and writable, and the shards of an
    earlier run with that prefix removed (saying so), so a training glob never mixes the two sets."""
    check_writable(out_dir, "shard folder")
    old = shard_paths(out_dir, prefix)
    for path in old:
        os.remove(path)
    if old:
        print(f"replaced {len(old)} earlier {prefix}_* shard{'s' * (len(old) != 1)} in {out_dir}")


class ShardWriter:
    """Packs documents' tokens back to back into shards of shard_size tokens, a document straddling
    two shards where it falls; shard 0 is the val split, the others train (llm.c's fineweb.py):
    {out_dir}/{prefix}_{val|train}_{index:06d}.bin. add() takes each document's tokens. Earlier
    {prefix}_* shards in out_dir are removed first (start_shards)."""

    def __init__(self, out_dir, prefix, shard_size=10**8, progress=True):
        start_shards(out_dir, prefix)
        self.out_dir, self.prefix, self.shard_size = out_dir, prefix, int(shard_size)
        self.buffer = np.empty(self.shard_size, dtype=np.uint16)
        self.count = 0
        self.paths = []
        self.progress = progress
        self._bar = None

    def add(self, tokens):
        tokens = np.asarray(tokens)
        while tokens.size:
            take = min(tokens.size, self.shard_size - self.count)
            self.buffer[self.count:self.count + take] = tokens[:take]
            self.count += take
            tokens = tokens[take:]
            self._progress(take)
            if self.count == self.shard_size:
                self._flush()

    def close(self):
        """Write the last, partial shard; the paths of all shards written."""
        if self.count:
            self._flush()
        return self.paths

    def _progress(self, n):
        if not self.progress:
            return
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=self.shard_size, unit="tokens", desc=f"shard {len(self.paths)}")
        self._bar.update(n)

    def _flush(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        split = "val" if not self.paths else "train"
        path = os.path.join(self.out_dir, f"{self.prefix}_{split}_{len(self.paths):06d}.bin")
        write_shard(path, self.buffer[:self.count])
        self.paths.append(path)
        self.count = 0


def tokenize_tinyshakespeare(text):
    """llm.c's tinyshakespeare.py tokenization: every "\\n\\n"-separated section (a speech) is a
    document with EOT before it. Returns (val, train) uint16 arrays: the first 32,768 tokens, the rest."""
    from llmnp.tokenizer import get_encoding
    text = "<|endoftext|>" + text.replace("\n\n", "\n\n<|endoftext|>")
    tokens = np.array(get_encoding().encode(text, allowed_special={"<|endoftext|>"}), dtype=np.uint16)
    return tokens[:TINYSHAKESPEARE_VAL_TOKENS], tokens[TINYSHAKESPEARE_VAL_TOKENS:]


def write_tinyshakespeare(text, out_dir):
    """Tokenize a Shakespeare-style text into llm.c's (train, val) .bin paths under out_dir."""
    val, train = tokenize_tinyshakespeare(text)
    if train.size == 0:
        raise UserError(f"the text is too short: {val.size} tokens, the val split alone takes "
                        f"{TINYSHAKESPEARE_VAL_TOKENS}")
    train_path = os.path.join(out_dir, "tiny_shakespeare_train.bin")
    val_path = os.path.join(out_dir, "tiny_shakespeare_val.bin")
    write_shard(val_path, val)
    write_shard(train_path, train)
    return train_path, val_path


def default_corpus(out_dir=TINYSHAKESPEARE_DIR):
    """(train_pattern, val_pattern) of llm.c's default TinyShakespeare paths. If they do not exist
    yet, makes them from data/shakespeare.txt (public-domain Shakespeare plays shipped with llmnp,
    see data/README.md), tokenized the way data/tinyshakespeare.py tokenizes llm.c's download."""
    train = os.path.join(out_dir, "tiny_shakespeare_train.bin")
    val = os.path.join(out_dir, "tiny_shakespeare_val.bin")
    if os.path.exists(train) and os.path.exists(val):
        return train, val
    if not os.path.exists(CORPUS_TEXT):
        raise UserError(f"the default corpus {CORPUS_TEXT} is missing (llmnp not run from a clone?): "
                        f"run `python data/tinyshakespeare.py` or pass your own shards")
    print(f"default corpus: tokenizing llmnp's data/shakespeare.txt (public-domain Shakespeare) "
          f"into {train} and {val}")
    with open(CORPUS_TEXT, encoding="utf-8") as f:
        text = f.read()
    return write_tinyshakespeare(text, out_dir)


def download_file(url, path):
    """Fetch url to path with a progress bar; offline, one clear line."""
    import urllib.request
    from tqdm import tqdm
    make_dir(os.path.dirname(os.path.abspath(path)), "download folder")
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("content-length") or 0)
            with tqdm(total=total, unit="iB", unit_scale=True, unit_divisor=1024, desc=os.path.basename(path)) as bar:
                while chunk := resp.read(1 << 16):
                    bar.update(f.write(chunk))
    except OSError as e:                             # URLError, timeouts, refused connections
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot download {url} ({getattr(e, 'reason', e)}); "
                        f"offline, pass a local copy with --input") from None
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- eval (HellaSwag) file
def write_eval_file(path, examples):
    """llm.c's multiple-choice eval file (data_common.py write_evalfile). examples: dicts with
    label, ctx_tokens, ending_tokens (4 lists). Per example, uint16s: 65535, example bytes, index,
    label, #completions, len(ctx) + ctx, then len + tokens for each ending. Header: magic, version,
    #examples, longest example in bytes."""
    stream, longest = [], 0
    if len(examples) >= 2**16:
        raise ValueError("an eval file holds fewer than 65536 examples")
    for idx, ex in enumerate(examples):
        endings = ex["ending_tokens"]
        if len(endings) != 4:
            raise ValueError(f"example {idx}: expected 4 endings, got {len(endings)}")
        s = [EVAL_START, 0, idx, int(ex["label"]), len(endings), len(ex["ctx_tokens"]), *ex["ctx_tokens"]]
        for end in endings:
            s += [len(end), *end]
        if any(not 0 <= t < EVAL_START for t in s[5:]):
            raise ValueError(f"example {idx}: token ids must be in [0, 65535)")
        s[1] = 2 * len(s)
        if s[1] >= 2**16:
            raise ValueError(f"example {idx} is too long ({s[1]} bytes)")
        longest = max(longest, s[1])
        stream += s
    if longest == 0:
        raise ValueError("no examples to write")
    write_atomic(path, new_header(EVAL_MAGIC, EVAL_VERSION, len(examples), longest), np.array(stream, dtype="<u2"))
