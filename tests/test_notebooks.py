"""The teaching notebooks: each source notebooks/NN_name.py (jupytext percent format) executes top to
bottom as a notebook (nbclient, kernel python3, MPLBACKEND=Agg), and each committed .ipynb holds the
cells notebooks/build.py renders from its source. The GPU cells of 10_cuda run where CuPy finds a GPU
and print a skip note elsewhere."""
import glob
import os
import subprocess
import sys

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
SOURCES = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "[0-9][0-9]_*.py")))


def test_ipynb_match_sources():
    result = subprocess.run([sys.executable, os.path.join(NOTEBOOK_DIR, "build.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(SOURCES) == 13


def test_gradcheck_cell_is_the_same_everywhere():
    """The finite-difference helpers are pasted into each notebook that uses them, so that each reads on
    its own; the copies stay one text."""
    copies = {}
    for path in SOURCES:
        for cell in jupytext.read(path).cells:
            if cell.cell_type == "code" and "def gradcheck_table(" in cell.source:
                copies[os.path.basename(path)] = cell.source
    assert len(copies) >= 8 and len(set(copies.values())) == 1, sorted(copies)


@pytest.mark.parametrize("path", SOURCES, ids=os.path.basename)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")              # the kernel inherits it: figures render off screen
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()                                     # raises CellExecutionError on the first failing cell
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count for c in code_cells)
