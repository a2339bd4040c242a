"""The report as a notebook: committed without outputs, and executed end to end (a short run)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import require_real_data

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "fashion_mnist.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert any("parameters" in cell.metadata.get("tags", []) for cell in code)


@pytest.mark.slow
def test_the_notebook_runs_end_to_end(tmp_path, monkeypatch):
    require_real_data()
    monkeypatch.setenv("FMNIST_NOTEBOOK_QUICK", "1")  # the kernel inherits this process's environment
    monkeypatch.setenv("FMNIST_NOTEBOOK_OUT", str(tmp_path / "run"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises at the first failing cell
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "total parameters: 845,674" in text and "right," in text and "the whole report:" in text
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "figures" / "mistakes.png").is_file()
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 5  # samples, curves, confusion matrix, predictions, mistakes
