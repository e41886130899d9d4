"""The notebooks: stored clean (nbformat 4, no outputs) and executed top to bottom.

Execution uses nbclient with the ``python3`` kernel, one notebook per test, each in its own temp
directory as working directory so nothing is written into the repository. The kernel inherits
the environment, so ``SPARSE_LENS_MODEL=<checkpoint dir>`` runs the notebooks on another model
(each notebook's first cell reads it; the default is the shipped ``stdlib-sparse``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
MODEL_LINE = 'MODEL = os.environ.get("SPARSE_LENS_MODEL", "stdlib-sparse")'
CELL_TIMEOUT = 600  # seconds per cell; a whole notebook takes a few minutes on two CPU cores


def _ids(path: Path) -> str:
    return path.stem


def test_the_notebooks_are_there():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_quickstart",
        "02_quote_circuit",
        "03_bracket_counting",
        "04_train_your_own",
    ], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_valid_v4_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has stored outputs: clear them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"
        assert "attachments" not in cell, f"cell {i} has attachments"
    assert MODEL_LINE in code[0].source, "the first code cell must pick the model from the env"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, errors
