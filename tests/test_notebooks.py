"""The notebooks run top to bottom (small settings) and their .ipynb pairs match the sources."""

import pathlib

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))


def test_every_notebook_is_found():
    assert {"quickstart", "scale", "labels_and_batches", "defenses", "sweeps", "text", "your_model"} <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(source, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    from nbclient import NotebookClient

    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run jupytext --to ipynb {source}"
    notebook = jupytext.read(source)
    stored = jupytext.read(paired)
    assert [c.source for c in stored.cells] == [c.source for c in notebook.cells], \
        f"{paired.name} is out of date: run jupytext --to ipynb {source}"
    assert not any(c.get("outputs") for c in stored.cells), f"{paired.name} has outputs: strip them"
    monkeypatch.setenv("DLG_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    executed = NotebookClient(notebook, timeout=600, kernel_name="python3",
                              resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
