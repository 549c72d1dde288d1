"""Renders the teaching notebooks: notebooks/NN_name.ipynb from its source notebooks/NN_name.py.

    python notebooks/build.py              # write every .ipynb from its .py, without outputs
    python notebooks/build.py --execute    # the same, each run top to bottom, with its outputs
    python notebooks/build.py --check      # exit 1 if a committed .ipynb's cells differ from its .py
    python notebooks/build.py --execute 02 04   # only the notebooks whose names start so

A source is a plain Python file in jupytext's percent format: `# %%` opens a code cell, `# %% [markdown]`
a markdown cell whose lines are comments. It is the file to edit, lint and run as a script
(`python notebooks/05_gelu.py`); the .ipynb beside it is its rendering, committed so that a notebook
can be opened on the web. --check compares cell types and sources only, so a rendering with outputs
passes it too. Not here: anything the notebooks compute.
"""
import glob
import os
import sys

import jupytext
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]_*.py")))


def render(source):
    """The notebook of one percent-format source: fixed cell ids and metadata, so the same source
    always gives the same file."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"
        cell.metadata = {}
    nbformat.validate(nb)
    return nb


def execute(nb):
    """Runs nb in a fresh python3 kernel from this folder, filling in its outputs."""
    import nbclient
    os.environ.pop("MPLBACKEND", None)       # the kernel's own inline backend, so that figures are kept
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": HERE}}).execute()


def cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def main(argv):
    stale = []
    only = [a for a in argv if not a.startswith("--")]
    for source in SOURCES:
        if only and not any(os.path.basename(source).startswith(name) for name in only):
            continue
        path = source[:-len(".py")] + ".ipynb"
        nb = render(source)
        if "--check" in argv:
            if not os.path.exists(path) or cells(nbformat.read(path, as_version=4)) != cells(nb):
                stale.append(path)
            continue
        if "--execute" in argv:
            print("executing", os.path.basename(source), flush=True)
            execute(nb)
        with open(path, "w", encoding="utf-8") as f:
            f.write(nbformat.writes(nb) + "\n")
    rendered = {source[:-len(".py")] + ".ipynb" for source in SOURCES}
    stale += sorted(set(glob.glob(os.path.join(HERE, "*.ipynb"))) - rendered)
    if stale:
        print("out of date with their .py sources (run python notebooks/build.py; delete an .ipynb "
              "without a source): " + " ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
