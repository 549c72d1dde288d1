"""FineWeb / FineWeb-Edu -> llm.c's token shards, as llm.c's dev/data/fineweb.py.

    python data/fineweb.py -t edu -v 10B                 # HuggingFaceFW/fineweb-edu, sample-10BT, via the hub
    python data/fineweb.py -t classic -v 100B            # HuggingFaceFW/fineweb, sample-100BT
    python data/fineweb.py --input docs/ -s 1000000      # local .jsonl ("text" per line), .txt or .parquet

Every document gets <|endoftext|> before it and its GPT-2 tokens, tokenized in parallel processes (in
order); documents are packed back to back into shards of -s tokens (default 10^8), a document crossing
a shard boundary is split there; shard 0 is val, the rest train:
dev/data/{edu_}fineweb{10B,100B}/{edu_}fineweb_{val,train}_%06d.bin.
Downloading needs `pip install datasets` (FineWeb is ~28 GB for 10B tokens, ~280 GB for 100B).
"""
import glob
import json
import multiprocessing as mp
import os

import numpy as np

from llmnp import cli
from llmnp.corpus import ShardWriter
from llmnp.errors import UserError, run_cli
from llmnp.tokenizer import EOT, encode


def tokenize(text):
    """<|endoftext|> then the document's tokens, uint16."""
    return np.array([EOT] + encode(text), dtype=np.uint16)


def hub_documents(kind, version):
    """Texts of FineWeb(-Edu) sample-{10,100}BT through the hub's datasets library."""
    from llmnp.download import hub_reachable
    if not hub_reachable():
        raise UserError("the Hugging Face hub does not answer (offline?): pass local files with --input")
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("downloading FineWeb needs the datasets library: pip install datasets") from None
    name = {"classic": "HuggingFaceFW/fineweb", "edu": "HuggingFaceFW/fineweb-edu"}[kind]
    for doc in load_dataset(name, name=f"sample-{version}T", split="train"):
        yield doc["text"]


def local_files(path):
    """The document files of --input: the file itself, or a folder's .jsonl / .txt / .parquet, sorted."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if f.endswith((".jsonl", ".json", ".txt", ".parquet")))
    else:
        files = [path] if os.path.exists(path) else []
    if not files:
        raise UserError(f"{path}: no such file, or no .jsonl / .txt / .parquet files in it")
    return files


def local_documents(files):
    """Texts of .jsonl (a "text" field per line), .txt (one document per file) and .parquet (a "text"
    column; needs pyarrow) files."""
    for f in files:
        if f.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
            yield from pq.read_table(f, columns=["text"]).column("text").to_pylist()
        elif f.endswith((".jsonl", ".json")):
            with open(f, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if line.strip():
                        try:
                            yield json.loads(line)["text"]
                        except (ValueError, KeyError, TypeError):
                            raise UserError(f"{f}, line {i + 1}: not a JSON object with a \"text\" field") from None
        else:
            with open(f, encoding="utf-8") as fh:
                yield fh.read()


def main(argv=None):
    ap = cli.ArgumentParser("python data/fineweb.py", __doc__.split("\n\n")[0])
    ap.add_argument("-t", "--type", default="classic", choices=["classic", "edu"], help="fineweb or fineweb-edu")
    ap.add_argument("-v", "--version", default="10B", choices=["10B", "100B"], help="sample-10BT or sample-100BT")
    ap.add_argument("-s", "--shard-size", "--shard_size", type=cli.positive_int, default=10**8, help="tokens per shard [10^8]")
    ap.add_argument("--input", help="local documents instead of the download (file or folder)")
    ap.add_argument("-o", "--out-dir", "--out_dir", help="[dev/data/{edu_}fineweb{10B,100B}]")
    ap.add_argument("-p", "--processes", type=cli.positive_int, default=max(1, os.cpu_count() // 2),
                    help="tokenizer processes [half the cores]")
    args = ap.parse_args(argv)
    prefix = "edu_fineweb" if args.type == "edu" else "fineweb"
    out_dir = args.out_dir or os.path.join("dev", "data", f"{prefix}{args.version}")
    docs = local_documents(local_files(args.input)) if args.input else hub_documents(args.type, args.version)
    writer = ShardWriter(out_dir, prefix, args.shard_size)
    with mp.Pool(args.processes) as pool:
        for tokens in pool.imap(tokenize, docs, chunksize=16):
            writer.add(tokens)
    paths = writer.close()
    if not paths:
        raise UserError("no documents: nothing written")
    print(f"wrote {len(paths)} shards to {out_dir} ({paths[0]} is val)")


if __name__ == "__main__":
    run_cli(main)
