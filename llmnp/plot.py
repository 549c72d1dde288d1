"""Plot training runs: train/val loss and HellaSwag accuracy against step, from the main.log files that
train_gpt2.py (and llm.c) write, with OpenAI's GPT-2 checkpoints as reference lines.

    python -m llmnp.plot OUT_DIR [OUT_DIR ...] [-o plot.png]

main.log lines: `s:STEP trl:LOSS ...` (train), `s:STEP tel:LOSS` (val), `s:STEP eval:ACC` (HellaSwag);
the first name:value after the step is the one read, and a later line for the same step wins.
"""
import argparse
import io
import os

from llmnp.errors import UserError, run_cli
from llmnp.fileio import write_atomic

# OpenAI GPT-2 checkpoints evaluated by llm.c: FineWeb val loss and HellaSwag accuracy
GPT2_VAL_LOSS = {"124M": 3.424958, "350M": 3.083089}
GPT2_HELLASWAG = {"124M": 0.294463, "350M": 0.375224}


def read_log(path):
    """{"trl": {step: value}, "tel": {...}, "eval": {...}} from one main.log."""
    series = {"trl": {}, "tel": {}, "eval": {}}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2 or not parts[0].startswith("s:"):
                continue
            name, _, value = parts[1].partition(":")
            if name in series:
                series[name][int(parts[0][2:])] = float(value)
    return series


def plot(run_dirs, out_path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = []
    for d in run_dirs:
        path = os.path.join(d, "main.log") if os.path.isdir(d) else d
        if not os.path.exists(path):
            raise UserError(f"{path} not found: give the -o directory of a training run (it holds main.log)")
        runs.append((os.path.basename(os.path.normpath(d)), read_log(path)))
    has_eval = any(s["eval"] for _, s in runs)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(12 if has_eval else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for name, s in runs:
        if s["trl"]:
            ax.plot(*zip(*sorted(s["trl"].items())), lw=1, alpha=0.7, label=f"{name} train")
        if s["tel"]:
            ax.plot(*zip(*sorted(s["tel"].items())), marker="o", ms=3, label=f"{name} val")
    for size, value in GPT2_VAL_LOSS.items():
        ax.axhline(value, ls="--", lw=1, color="gray")
        ax.annotate(f"OpenAI GPT-2 {size} (FineWeb val)", (0, value), fontsize=8, color="gray", va="bottom")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title("loss")
    ax.legend(fontsize=8)
    if has_eval:
        ax = axes[0, 1]
        for name, s in runs:
            if s["eval"]:
                ax.plot(*zip(*sorted(s["eval"].items())), marker="o", ms=3, label=name)
        for size, value in GPT2_HELLASWAG.items():
            ax.axhline(value, ls="--", lw=1, color="gray")
            ax.annotate(f"OpenAI GPT-2 {size}", (0, value), fontsize=8, color="gray", va="bottom")
        ax.axhline(0.25, ls=":", lw=1, color="black")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_title("HellaSwag")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(out_path, png.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot train/val loss and HellaSwag from main.log files.")
    parser.add_argument("runs", nargs="+", help="training output dirs (or main.log paths)")
    parser.add_argument("-o", "--out", default=None, help="PNG to write (default: RUN/plot.png of the first run)")
    args = parser.parse_args(argv)
    first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0]) or "."
    out = plot(args.runs, args.out or os.path.join(first, "plot.png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
