"""HellaSwag jsonl -> llm.c's eval .bin, as llm.c's dev/data/hellaswag.py writes it.

    python data/hellaswag.py                                  # download rowanz/hellaswag val (10,042 examples)
    python data/hellaswag.py --input hellaswag_val.jsonl      # a local copy instead, offline

Per example: the context's GPT-2 tokens (`ctx`), each of the 4 endings as the tokens of " " + ending,
the label; no <|endoftext|>. Writes dev/data/hellaswag/hellaswag_{split}.bin, the file train_gpt2.py -h 1
and `python -m llmnp.hellaswag` score (llm.c's script also scores HF GPT-2 with PyTorch; here that is
`python -m llmnp.hellaswag --model gpt2_124M.bin`).
"""
import json
import os

from tqdm import tqdm

from llmnp import cli
from llmnp.corpus import download_file
from llmnp.hellaswag import write_eval_file
from llmnp.errors import UserError, run_cli
from llmnp.tokenizer import encode

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
OUT_DIR = os.path.join("dev", "data", "hellaswag")


def render_example(example):
    """llm.c's render_example, tokens only: dict(label, ctx_tokens, ending_tokens)."""
    if len(example["endings"]) != 4 or int(example["label"]) not in range(4):
        raise ValueError(f"expected 4 endings and a label 0..3, got {len(example['endings'])} and {example['label']}")
    return {"label": int(example["label"]),
            "ctx_tokens": encode(example["ctx"]),
            "ending_tokens": [encode(" " + end) for end in example["endings"]]}


def main(argv=None):
    ap = cli.ArgumentParser("python data/hellaswag.py", __doc__.split("\n\n")[0])
    ap.add_argument("--input", help="a local hellaswag_*.jsonl instead of the download")
    ap.add_argument("-s", "--split", default="val", choices=["val", "train"], help="which split")
    ap.add_argument("-o", "--out-dir", "--out_dir", default=OUT_DIR, help="output folder")
    args = ap.parse_args(argv)
    path = args.input
    if path is None:
        path = os.path.join(args.out_dir, f"hellaswag_{args.split}.jsonl")
        if os.path.exists(path):
            print(f"{path} already exists, skipping download")
        else:
            download_file(URL.format(split=args.split), path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except (FileNotFoundError, IsADirectoryError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__})") from None
    examples = []
    for i, line in enumerate(tqdm(lines, desc="tokenizing", unit="examples")):
        try:
            examples.append(render_example(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}, line {i + 1}: not a HellaSwag example ({type(e).__name__}: {e})") from None
    out = os.path.join(args.out_dir, f"hellaswag_{args.split}.bin")
    try:
        write_eval_file(out, examples)
    except ValueError as e:                          # 5 endings, a label out of range, ...
        raise UserError(f"{path}: {e}") from None
    print(f"wrote {len(examples):,} examples to {out}")


if __name__ == "__main__":
    run_cli(main)
