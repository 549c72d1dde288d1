"""Fetch OpenAI's GPT-2 weights from the Hugging Face hub and write llm.c's files.

    python -m llmnp.download gpt2 [gpt2-medium gpt2-large gpt2-xl] [-o DIR]
    python -m llmnp.download path/to/hf_folder        # convert local HF GPT-2 weights instead

For each model: gpt2_{124M,355M,774M,1558M}.bin (float32, version 3) and gpt2_..._bf16.bin (version 5);
once: gpt2_tokenizer.bin; for the 124M model also gpt2_124M_debug_state.bin (llmnp's float64 CPU
forward/backward on TinyShakespeare val, for `python -m llmnp.check`; --no-debug-state skips it).
Local weights of another size are named by depth: gpt2_d{L}.bin.

Downloading needs `pip install huggingface_hub` (not a dependency of llmnp). Offline (the hub's host
does not answer within 3 s and no proxy is set) it runs with HF_HUB_OFFLINE=1, so weights already in
the Hugging Face cache are used and missing ones fail at once, in one line, instead of after retries.

Not here: the formats themselves (checkpoint.py, tokenizer.py).
"""
import os
import socket
from urllib.parse import urlparse

from llmnp import cli
from llmnp.errors import UserError, run_cli
from llmnp.fileio import check_writable

HUB_MODELS = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
SIZES = {(12, 768): "124M", (24, 1024): "355M", (36, 1280): "774M", (48, 1600): "1558M"}   # (L, C)


def hub_reachable(timeout=3.0):
    """True when the hub's host accepts a TCP connection (or a proxy is configured: let it try)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch(name):
    """A local folder holding model.safetensors (+ config.json) for a hub model name or local path."""
    if os.path.exists(name):
        return name
    if name not in HUB_MODELS:
        raise UserError(f"{name!r} is neither a local file or folder nor one of {', '.join(HUB_MODELS)}")
    if "HF_HUB_OFFLINE" not in os.environ and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"           # read by huggingface_hub at import: cache only
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("downloading GPT-2 weights needs huggingface_hub: pip install huggingface_hub") from None
    repo = f"openai-community/{name}"
    try:
        weights = hf_hub_download(repo, "model.safetensors")
        hf_hub_download(repo, "config.json")
    except Exception as e:                           # the hub's errors vary by version; all end here
        if offline:
            raise UserError(f"cannot download {name}: offline (HF_HUB_OFFLINE=1, the hub did not answer) "
                            f"and {repo} is not in the Hugging Face cache") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot download {name} from the Hugging Face hub: {type(e).__name__} {first}") from None
    return os.path.dirname(weights)


def size_label(config):
    return SIZES.get((config.num_layers, config.channels), f"d{config.num_layers}")


def main(argv=None):
    ap = cli.ArgumentParser("python -m llmnp.download", __doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a local HF folder")
    ap.add_argument("-o", "--out-dir", default=".", help="where to write the .bin files [here]")
    ap.add_argument("--no-debug-state", action="store_true", help="skip gpt2_124M_debug_state.bin")
    args = ap.parse_args(argv)
    from llmnp.checkpoint import load_hf, save_model
    from llmnp.tokenizer import write_tokenizer_file
    folders = [fetch(name) for name in args.models]           # every download before any writing
    check_writable(args.out_dir, "output folder")
    tokenizer_path = os.path.join(args.out_dir, "gpt2_tokenizer.bin")
    write_tokenizer_file(tokenizer_path)
    print(f"wrote {tokenizer_path}")
    for folder in folders:
        config, flat = load_hf(folder)
        label = size_label(config)
        base = os.path.join(args.out_dir, f"gpt2_{label}")
        save_model(base + ".bin", config, flat, dtype="float32")
        save_model(base + "_bf16.bin", config, flat, dtype="bfloat16")
        print(f"wrote {base}.bin and {base}_bf16.bin: {flat.size:,} parameters")
        if label == "124M" and not args.no_debug_state:
            from llmnp.check import make_debug_state
            loss = make_debug_state(base + ".bin", base + "_debug_state.bin")
            print(f"wrote {base}_debug_state.bin (B=4, T=64, loss {loss:.6f})")
    return 0


if __name__ == "__main__":
    run_cli(main)
