"""The score of a finished mutation run (mutation/run.sh): killed / (mutants - equivalent ones).

    python mutation/score.py [MUTATION_DIR]        # default /tmp/llmnp-mutation
    python mutation/score.py --reset [MUTATION_DIR]   # mark the unexplained survivors untested (run.sh --survivors)

An equivalent mutant is one no test can tell from the original; mutation/equivalent.txt lists them,
each by its function, the line it changes, the line it writes and a one-line reason:

    mutant: llmnp.checkpoint.x_save_hf
    - write_atomic(os.path.join(out_dir, "config.json"), json.dumps(hf_config, indent=2).encode())
    + write_atomic(os.path.join(out_dir, "config.json"), json.dumps(hf_config, indent=None).encode())
    why: JSON indentation; every reader parses the file

(matched by text, not by mutmut's numbers, which change when a function does). An entry whose reason
starts "GPU only" is a mutant that only a GPU test can kill (CI and this run have no GPU): it is listed
apart and counts against the score. Prints the score per module and every survivor that is not listed,
with its change.
"""
import ast
import collections
import difflib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = re.compile(r"^(.*)__mutmut_(\d+|orig)$")


def function_sources(path):
    """{function name in the mutants file: its source lines} for one mutated module."""
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and NAME.match(node.name):
            out[node.name] = lines[node.lineno:node.end_lineno]                      # the body
    return out


def change(sources, function, number):
    """(removed lines, added lines) of one mutant, each stripped."""
    orig, mutant = sources[f"{function}__mutmut_orig"], sources[f"{function}__mutmut_{number}"]
    removed, added = [], []
    for line in difflib.unified_diff(orig, mutant, lineterm="", n=0):
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:].strip())
        elif line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:].strip())
    return tuple(removed), tuple(added)


def equivalents(path=os.path.join(HERE, "equivalent.txt")):
    """{(function, removed, added): reason} from equivalent.txt."""
    entries, entry = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("mutant:"):
                entry = [line.split(":", 1)[1].strip(), [], []]
            elif entry is not None and line.startswith("- "):
                entry[1].append(line[2:].strip())
            elif entry is not None and line.startswith("+ "):
                entry[2].append(line[2:].strip())
            elif entry is not None and line.startswith("why:"):
                entries[(entry[0], tuple(entry[1]), tuple(entry[2]))] = line.split(":", 1)[1].strip()
                entry = None
    return entries


def main():
    args = sys.argv[1:]
    reset = "--reset" in args
    args = [a for a in args if a != "--reset"]
    root = args[0] if args else os.environ.get("MUTATION_DIR", "/tmp/llmnp-mutation")
    mutants = os.path.join(root, "mutants")
    listed = equivalents()
    counts = collections.defaultdict(collections.Counter)
    unexplained, used = [], set()
    for dirpath, _, files in os.walk(mutants):
        for name in files:
            if not name.endswith(".py.meta"):
                continue
            meta = os.path.join(dirpath, name)
            with open(meta) as f:
                data = json.load(f)
            exit_codes = data["exit_code_by_key"]
            sources = function_sources(meta[:-len(".meta")])
            if reset:                           # mutmut tests again the mutants it has no verdict for
                for key, code in exit_codes.items():
                    function, number = NAME.match(key).groups()
                    if code in (0, 33) and (function, *change(sources, function.rsplit(".", 1)[1], number)) not in listed:
                        exit_codes[key] = None
                with open(meta, "w") as f:
                    json.dump(data, f)
                continue
            for key, code in sorted(exit_codes.items()):
                function, number = NAME.match(key).groups()
                module = function.rsplit(".", 1)[0]
                status = {1: "killed", 0: "survived", 33: "no tests", None: "not run"}.get(code, "killed")
                if status in ("survived", "no tests"):
                    removed, added = change(sources, function.rsplit(".", 1)[1], number)
                    if (function, removed, added) in listed:     # "GPU only": killed by a GPU test, counted here
                        gpu = listed[(function, removed, added)].startswith("GPU only")
                        status = "GPU only" if gpu else "equivalent"
                        used.add((function, removed, added))
                    else:
                        unexplained.append((key, status, removed, added))
                counts[module][status] += 1
    if reset:
        return
    total = collections.Counter()
    print("| module | mutants | killed | equivalent | GPU only | survived | no tests | score |")
    print("|---|---|---|---|---|---|---|---|")
    for module in sorted(counts, key=lambda m: -sum(counts[m].values())):
        c = counts[module]
        total.update(c)
        print(row(module, c))
    print(row("all", total))
    for key, status, removed, added in unexplained:
        print(f"\n{key}: {status}")
        print("\n".join([f"  - {line}" for line in removed] + [f"  + {line}" for line in added]))
    stale = set(listed) - used
    if stale:
        print(f"\n{len(stale)} entries of equivalent.txt match no surviving mutant (the code changed?):")
        for function, removed, added in sorted(stale):
            print(f"  {function}: - {' / '.join(removed)}")


def row(module, c):
    n = sum(c.values())
    scored = n - c["equivalent"] - c["not run"]
    score = f"{100 * c['killed'] / scored:.1f}%" if scored else "-"
    return (f"| {module} | {n:,} | {c['killed']:,} | {c['equivalent']:,} | {c['GPU only']:,} | {c['survived']:,} "
            f"| {c['no tests']:,} | {score} |")


if __name__ == "__main__":
    main()
