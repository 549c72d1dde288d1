"""Plot training runs: train/val loss and HellaSwag accuracy against step, from the main.log files that
train_gpt2.py (and llm.c) write, with OpenAI's GPT-2 checkpoints as reference lines.

    python -m llmnp.plot OUT_DIR [OUT_DIR ...] [-o plot.png]
    python -m llmnp.plot --expect shakespeare_cpu [OUT_DIR ...]   # the band healthy runs stay in

main.log lines: `s:STEP trl:LOSS ...` (train), `s:STEP tel:LOSS` (val), `s:STEP eval:ACC` (HellaSwag);
the first name:value after the step is the one read, and a later line for the same step wins.
"""
import io
import os
from dataclasses import dataclass

from llmnp import cli
from llmnp.errors import UserError, run_cli
from llmnp.fileio import write_atomic

# OpenAI GPT-2 checkpoints evaluated by llm.c: FineWeb val loss and HellaSwag accuracy
GPT2_VAL_LOSS = {"124M": 3.424958, "350M": 3.083089}
GPT2_HELLASWAG = {"124M": 0.294463, "350M": 0.375224}


@dataclass(frozen=True)
class Expected:
    """What healthy runs of one command reach: points (series, step, low, mean, high), series "tel" (val
    loss) or "eval" (HellaSwag accuracy); a run leaves the band where its value at that step is outside
    [low, high]."""
    title: str
    command: str
    source: str
    points: tuple


# Measured: the README's first command with --seed 42, 43, 44 (the random init; the data order is fixed),
# no gpt2_124M.bin present, on the 2-core CPU. Val losses (step 0, 10, 20): seed 42 11.086657 9.238631
# 8.556068; 43 10.976926 9.102873 8.471040; 44 10.917035 9.164880 8.500698.
# (step, mean, sample standard deviation); the band is mean +- 3 standard deviations.
SHAKESPEARE_CPU = ((0, 10.9935, 0.0860), (10, 9.1688, 0.0680), (20, 8.5093, 0.0432))
EXPECTED = {
    "shakespeare_cpu": Expected(
        "shakespeare, README CPU command (random d12, B=4 T=64, 20 steps)", "python train_gpt2.py --seed S",
        "measured: 3 seeds (42, 43, 44) on the 2-core CPU; band = mean +- 3 std",
        tuple(("tel", step, mean - 3 * std, mean, mean + 3 * std) for step, mean, std in SHAKESPEARE_CPU)),
    "shakespeare_gpu": Expected(
        "shakespeare, README GPU command (d12 bf16, B=8 T=1024, 120 steps)",
        "python train_gpt2.py --device cuda -e d12 -b 8 -t 1024 -x 120 -l 6e-4 -u 10 -q 0.1 -c 0.1 -v 10 -m 4",
        "not measured yet: no band", ()),
    "fineweb_d12": Expected(
        "FineWeb 10B, GPT-2 124M (d12) as llm.c trains it",
        "python train_gpt2.py --device cuda -e d12 -b 64 -t 1024 -d 524288 -l 6e-4 -u 700 -q 0 -c 0.1 -x 18865 -h 1 ...",
        "llm.c's published run (one run, no spread): val loss ~3.28 and HellaSwag 0.299 after 10B tokens "
        "(18,865 steps of 524,288); band = +-2% of it, an allowance, not a measured spread",
        (("tel", 18865, 3.28 * 0.98, 3.28, 3.28 * 1.02), ("eval", 18865, 0.299 * 0.98, 0.299, 0.299 * 1.02))),
}


def expected(name):
    if name not in EXPECTED:
        raise UserError(f"no expected results named {name!r}: choose one of {', '.join(EXPECTED)}")
    return EXPECTED[name]


def outside(exp, series):
    """[(series name, step, value, low, high)] where a run's main.log series leave exp's band."""
    out = []
    for name, step, low, _, high in exp.points:
        value = series[name].get(step)
        if value is not None and not low <= value <= high:
            out.append((name, step, value, low, high))
    return out


def _draw_band(ax, exp, name):
    points = [(step, low, mean, high) for s, step, low, mean, high in exp.points if s == name]
    if not points:
        return
    steps, low, mean, high = zip(*points)
    if len(points) > 1:
        ax.fill_between(steps, low, high, color="tab:green", alpha=0.2, lw=0, label="expected (healthy runs)")
        ax.plot(steps, mean, color="tab:green", lw=1, ls=":")
    else:
        ax.errorbar(steps, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [h - m for m, h in zip(mean, high)]],
                    fmt="s", color="tab:green", capsize=4, label="expected (published)")


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


def plot(run_dirs, out_path, expect=None):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    exp = expected(expect) if expect else None
    runs = []
    for d in run_dirs:
        path = os.path.join(d, "main.log") if os.path.isdir(d) else d
        if not os.path.exists(path):
            raise UserError(f"{path} not found: give the -o directory of a training run (it holds main.log)")
        runs.append((os.path.basename(os.path.normpath(d)), read_log(path)))
    has_eval = any(s["eval"] for _, s in runs) or (exp and any(p[0] == "eval" for p in exp.points))
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(12 if has_eval else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for name, s in runs:
        if s["trl"]:
            ax.plot(*zip(*sorted(s["trl"].items())), lw=1, alpha=0.7, label=f"{name} train")
        if s["tel"]:
            ax.plot(*zip(*sorted(s["tel"].items())), marker="o", ms=3, label=f"{name} val")
    if exp:
        _draw_band(ax, exp, "tel")
    for size, value in GPT2_VAL_LOSS.items():
        if exp and exp.points and not any(p[0] == "tel" and p[2] <= value * 1.5 for p in exp.points):
            continue                       # far below a band of another corpus: it would squash the plot
        ax.axhline(value, ls="--", lw=1, color="gray")
        ax.annotate(f"OpenAI GPT-2 {size} (FineWeb val)", (0, value), fontsize=8, color="gray", va="bottom")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_title("loss" if not exp else f"loss: {exp.title}", fontsize=9 if exp else None)
    if exp:
        _mark_outside(ax, exp, runs, "tel")
    ax.legend(fontsize=8)
    if has_eval:
        ax = axes[0, 1]
        for name, s in runs:
            if s["eval"]:
                ax.plot(*zip(*sorted(s["eval"].items())), marker="o", ms=3, label=name)
        if exp:
            _draw_band(ax, exp, "eval")
            _mark_outside(ax, exp, runs, "eval")
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


def _mark_outside(ax, exp, runs, name):
    """A red cross and the step on every point of a run outside the band."""
    for _, s in runs:
        for series, step, value, _, _ in outside(exp, s):
            if series == name:
                ax.plot([step], [value], "x", color="red", ms=10, mew=2)
                ax.annotate(f"outside (step {step})", (step, value), fontsize=8, color="red",
                            xytext=(-6, 6), textcoords="offset points", ha="right")


def verdicts(exp, run_dirs):
    """One line per run: inside the band at every expected step it reached, or where it left it."""
    lines = []
    for d in run_dirs:
        path = os.path.join(d, "main.log") if os.path.isdir(d) else d
        s = read_log(path)
        reached = [p for p in exp.points if p[1] in s[p[0]]]
        bad = outside(exp, s)
        what = {"tel": "val loss", "eval": "HellaSwag"}
        if not reached:
            lines.append(f"{d}: reached none of the expected steps ({', '.join(str(p[1]) for p in exp.points)})")
        elif not bad:
            lines.append(f"{d}: inside the expected band at " + ", ".join(
                f"step {p[1]} ({what[p[0]]} {s[p[0]][p[1]]:.4f} in [{p[2]:.4f}, {p[4]:.4f}])" for p in reached))
        else:
            lines.append(f"{d}: LEAVES the expected band at " + ", ".join(
                f"step {step} ({what[name]} {value:.4f} not in [{low:.4f}, {high:.4f}])"
                for name, step, value, low, high in bad))
    return lines


def main(argv=None):
    parser = cli.ArgumentParser("python -m llmnp.plot", "Plot train/val loss and HellaSwag from main.log files.")
    parser.add_argument("runs", nargs="*", help="training output dirs (or main.log paths)")
    parser.add_argument("-o", "--out", default=None, help="PNG to write (default: RUN/plot.png of the first run, "
                                                          "or expect_NAME.png with --expect and no run)")
    parser.add_argument("--expect", default=None, metavar="NAME",
                        help="draw the band healthy runs stay in and mark a run that leaves it: "
                             + ", ".join(EXPECTED))
    args = parser.parse_args(argv)
    if not args.runs and not args.expect:
        raise UserError("give the -o directory of a training run (it holds main.log), or --expect NAME")
    exp = expected(args.expect) if args.expect else None
    if args.runs:
        first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0]) or "."
        default = os.path.join(first, "plot.png")
    else:
        default = f"expect_{args.expect}.png"
    out = plot(args.runs, args.out or default, expect=args.expect)
    if exp:
        print(f"expected: {exp.title}: {exp.source}")
        print(f"  command: {exp.command}")
        for name, step, low, mean, high in exp.points:
            print(f"  step {step}: {'val loss' if name == 'tel' else 'HellaSwag'} {mean:.4f} "
                  f"(healthy: {low:.4f} .. {high:.4f})")
        for line in verdicts(exp, args.runs):
            print(line)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
