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


EXERCISES = [path for path in SOURCES if os.path.basename(path)[:2] in ("01", "02", "03", "04", "05", "06", "07")]


def test_every_layer_notebook_has_an_empty_exercise_with_a_checker():
    """The exercise cells stay empty in the committed sources: the checker falls back to
    notebooks/solutions/, which is what the executed notebooks use."""
    for path in EXERCISES:
        source = open(path, encoding="utf-8").read()
        assert 'raise NotImplementedError("your code here")' in source, path
        assert "check_backward(" in source and "solution=solution." in source, path


def test_a_planted_mistake_in_an_exercise_stops_the_notebook(monkeypatch):
    """05's exercise filled with a wrong derivative (the product rule's second term left out): the
    notebook stops at the check, which names dx."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = os.path.join(NOTEBOOK_DIR, "05_gelu.py")
    nb = jupytext.read(path)
    cell = next(c for c in nb.cells if "def gelu_backward_scratch(" in c.source)
    cell.source = cell.source.replace('raise NotImplementedError("your code here")',
                                      "return dout * 0.5 * (1 + np.tanh(S * (x + 0.044715 * x**3)))")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        client.execute()
    assert "ExerciseError" in str(failure.value) and "dx wrong" in str(failure.value)
