"""Corpus preparation for the data/ scripts: packing documents' tokens into llm.c shards, llm.c's
TinyShakespeare split, the offline default corpus the README's first command trains on, and downloads.

Not here: the shard format and the training loader (data.py), tokenization (tokenizer.py).
"""
import os
import re

import numpy as np

from llmnp.data import write_shard
from llmnp.errors import UserError
from llmnp.fileio import check_writable, make_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_TEXT = os.path.join(REPO_ROOT, "data", "shakespeare.txt")
TINYSHAKESPEARE_DIR = os.path.join("dev", "data", "tinyshakespeare")   # llm.c's default, cwd-relative
TINYSHAKESPEARE_VAL_TOKENS = 32768


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
