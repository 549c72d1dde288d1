"""The teaching notebooks: each executes top to bottom (nbclient, kernel python3, MPLBACKEND=Agg), and
the committed .ipynb files are exactly what notebooks/build.py writes (cells as in build.py, outputs
cleared). The GPU cells of 10_cuda run where CuPy finds a GPU and print a skip note elsewhere."""
import glob
import os
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def test_notebooks_match_build_py():
    result = subprocess.run([sys.executable, os.path.join(NOTEBOOK_DIR, "build.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(NOTEBOOKS) == 12


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")              # the kernel inherits it: figures render off screen
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()                                     # raises CellExecutionError on the first failing cell
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count for c in code_cells)
