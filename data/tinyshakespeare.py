"""TinyShakespeare -> llm.c's token shards, as llm.c's dev/data/tinyshakespeare.py.

    python data/tinyshakespeare.py                       # download char-rnn's input.txt (1.1 MB)
    python data/tinyshakespeare.py --input play.txt      # any local text instead, offline

Every "\\n\\n"-separated section (a speech) becomes a document with <|endoftext|> before it; GPT-2
tokens; the first 32,768 tokens are val, the rest train:
dev/data/tinyshakespeare/tiny_shakespeare_{val,train}.bin (llm.c: 32,768 val, 305,260 train tokens).
"""
import os

from llmnp import cli
from llmnp.corpus import TINYSHAKESPEARE_DIR, download_file, write_tinyshakespeare
from llmnp.data import read_shard
from llmnp.errors import UserError, run_cli

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv=None):
    ap = cli.ArgumentParser("python data/tinyshakespeare.py", __doc__.split("\n\n")[0])
    ap.add_argument("--input", help="a local text file instead of the download")
    ap.add_argument("-o", "--out-dir", "--out_dir", default=TINYSHAKESPEARE_DIR, help="output folder")
    args = ap.parse_args(argv)
    path = args.input
    if path is None:
        path = os.path.join(args.out_dir, "tiny_shakespeare.txt")
        if os.path.exists(path):
            print(f"{path} already exists, skipping download")
        else:
            print(f"downloading {URL} to {path}")
            download_file(URL, path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as UTF-8 text ({type(e).__name__})") from None
    train, val = write_tinyshakespeare(text, args.out_dir)
    for split in (val, train):
        print(f"wrote {read_shard(split).size:,} tokens to {split}")


if __name__ == "__main__":
    run_cli(main)
