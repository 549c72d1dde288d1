"""Your own text in: any UTF-8 text files -> llm.c token shards that train_gpt2.py reads.

    python data/text.py my.txt                                # -> dev/data/text/text_{val,train}_000000.bin
    python data/text.py book.txt letters/ -o dev/data/mine --val-fraction 0.1
    python train_gpt2.py -e gpt2_124M.bin -i "dev/data/text/text_train_*.bin" -j "dev/data/text/text_val_*.bin" -o out/
    python -m llmnp.generate --model out/ --prompt "It was"

Every file is one document (a folder stands for every file under it, sorted, hidden ones skipped), read
as UTF-8 and tokenized with GPT-2's BPE, with EOT (50256) before each document as llm.c's data scripts
do. The first --val-fraction of the tokens are the val split, the rest train; each split goes into
shards of at most --shard-size tokens, {out}/{prefix}_{val|train}_{i:06d}.bin (llm.c's naming).
A long file is tokenized in pieces (for the progress bar) cut only where that cannot change a token.
Not here: downloads (data/tinyshakespeare.py, data/fineweb.py), cleaning or deduplicating text.
"""
import os
import re

import numpy as np

from llmnp import cli
from llmnp.corpus import start_shards
from llmnp.data import write_shard
from llmnp.errors import UserError, run_cli
from llmnp.fileio import check_creatable
from llmnp.tokenizer import EOT, encode

# (B, T) settings the summary counts batches for: the CPU default, and GPU runs
TYPICAL_BT = [(4, 64), (16, 1024), (64, 1024)]
CHUNK_CHARS = 1 << 20

# A safe place to cut text before BPE: right after a newline that follows a non-space and precedes
# a non-space. GPT-2's pre-tokenizer (no look-behind) makes that newline a token of its own and starts
# a fresh token after it, whether or not the text goes on, so the pieces tokenize as the whole does.
SAFE_CUT = re.compile(r"\S\n(?=\S)")


def find_files(paths):
    """The files to read: named files in the order given, folders expanded to their files (recursive,
    sorted, hidden files and folders skipped)."""
    files = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
            if not found:
                raise UserError(f"{path}: the folder holds no files")
            files += found
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read_text(path):
    """The text of a UTF-8 file (a leading byte-order mark dropped); UserError for any other encoding."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
                        f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt") from None


def pieces(text, size=CHUNK_CHARS):
    """text in consecutive pieces of about `size` characters, cut only at SAFE_CUT places."""
    start = 0
    while len(text) - start > size:
        m = SAFE_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start:m.end()]
        start = m.end()
    yield text[start:]


def tokenize_document(text, bar=None, size=CHUNK_CHARS):
    """[EOT] + the tokens of text, uint16; bar (tqdm) advances by the bytes tokenized."""
    out = [np.array([EOT], np.uint16)]
    for piece in pieces(text, size):
        out.append(np.array(encode(piece), np.uint16))
        if bar is not None:
            bar.update(len(piece.encode("utf-8")))
    return np.concatenate(out)


def write_split(tokens, out_dir, prefix, split, shard_size):
    """tokens into shards of at most shard_size: [(path, tokens in it)]."""
    shards = []
    for i, start in enumerate(range(0, len(tokens), shard_size)):
        path = os.path.join(out_dir, f"{prefix}_{split}_{i:06d}.bin")
        chunk = tokens[start:start + shard_size]
        write_shard(path, chunk)
        shards.append((path, len(chunk)))
    return shards


def batches_per_epoch(shards, B, T):
    """As llm.c's DataLoader counts them: floor((N - 1) / (B*T)) per shard of N tokens."""
    return sum((n - 1) // (B * T) for _, n in shards)


def main(argv=None):
    ap = cli.ArgumentParser("python data/text.py", __doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="UTF-8 text files and/or folders of them")
    ap.add_argument("-o", "--out-dir", default=os.path.join("dev", "data", "text"), help="[dev/data/text]")
    ap.add_argument("--prefix", default="text", help="shard names: PREFIX_train_000000.bin ... [text]")
    ap.add_argument("--val-fraction", type=cli.number(float, lambda v: 0 <= v < 1, "a number in [0, 1)"), default=0.05,
                    help="share of tokens for val, 0 = none [0.05]")
    ap.add_argument("-s", "--shard-size", type=cli.positive_int, default=10**8, help="tokens per shard [10^8]")
    args = ap.parse_args(argv)
    if args.shard_size < 2:
        raise UserError(f"--shard-size must be at least 2 tokens, got {args.shard_size}")

    from tqdm import tqdm
    texts, empty = {}, []
    check_creatable(args.out_dir, "output folder")           # before the tokenizing, not after
    for path in find_files(args.inputs):                 # every file decoded before any work starts
        text = read_text(path)
        if text:
            texts[path] = text
        else:
            empty.append(path)
    if not texts:
        raise UserError(f"no text: {', '.join(empty)} {'is' if len(empty) == 1 else 'are all'} empty")
    with tqdm(total=sum(os.path.getsize(f) for f in texts), unit="B", unit_scale=True, desc="tokenizing") as bar:
        docs = [tokenize_document(text, bar) for text in texts.values()]
    tokens = np.concatenate(docs)
    n_val = round(len(tokens) * args.val_fraction)
    if args.val_fraction > 0 and not 2 <= n_val <= len(tokens) - 2:
        raise UserError(f"{len(tokens)} tokens are too few to split {args.val_fraction:g} of them off for "
                        f"val: give more text, or --val-fraction 0")
    start_shards(args.out_dir, args.prefix)
    splits = {"train": write_split(tokens[n_val:], args.out_dir, args.prefix, "train", args.shard_size),
              "val": write_split(tokens[:n_val], args.out_dir, args.prefix, "val", args.shard_size)}

    # the summary: what was written, and what it is worth in training batches
    print(f"{len(tokens):,} tokens from {len(docs)} file{'s' * (len(docs) != 1)}"
          + (f" ({len(empty)} empty, skipped)" if empty else ""))
    for split, shards in splits.items():
        if shards:
            where = shards[0][0] if len(shards) == 1 else f"{len(shards)} shards, {shards[0][0]} ..."
            print(f"  {split:5s} {sum(n for _, n in shards):>12,} tokens  {where}")
    print("batches per epoch (train / val), llm.c's DataLoader count:")
    for B, T in TYPICAL_BT:
        print(f"  B={B:<3d} T={T:<5d} {batches_per_epoch(splits['train'], B, T):>10,} / "
              f"{batches_per_epoch(splits['val'], B, T):,}")
    B, T = TYPICAL_BT[0]
    if min(n for shards in splits.values() for _, n in shards) < B * T + 1:
        print("  note: a shard needs B*T+1 tokens for one batch: for this little text use a smaller -b / -t")
    glob_of = lambda split: os.path.join(args.out_dir, f"{args.prefix}_{split}_*.bin")
    print("train on it:\n  python train_gpt2.py -i \"%s\"%s -o out/%s" % (
        glob_of("train"), f' -j "{glob_of("val")}"' if splits["val"] else "", args.prefix))


if __name__ == "__main__":
    run_cli(main)
