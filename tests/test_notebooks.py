"""The notebooks run top to bottom (short budget) and their .ipynb pairs match the sources."""

import pathlib

import pytest

NOTEBOOKS = sorted(pathlib.Path(__file__).parent.parent.joinpath("notebooks").glob("*.py"))


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(source, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    from nbclient import NotebookClient

    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run jupytext --sync {source}"
    notebook = jupytext.read(source)
    assert [c.source for c in jupytext.read(paired).cells] == [c.source for c in notebook.cells]
    monkeypatch.setenv("DLG_NOTEBOOK_ITERATIONS", "20")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
