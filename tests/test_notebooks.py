"""The notebooks: stored clean (nbformat 4, no outputs) and executed top to bottom.

Execution uses nbclient with the ``python3`` kernel, one notebook per test, each in its own temp
directory as working directory so nothing is written into the repository. The kernel inherits
the environment, so ``SPARSE_LENS_MODEL=<checkpoint dir>`` runs the notebooks on another model
(each notebook's first cell reads it; the default is the shipped ``stdlib-sparse``).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
DEFAULT_MODEL = "stdlib-sparse"
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


def _model_missing() -> str | None:
    """Why the notebooks cannot run here, or None if they can."""
    model = os.environ.get("SPARSE_LENS_MODEL", DEFAULT_MODEL)
    if Path(model).is_dir():
        return None
    from sparse_lens.pretrained import shipped_model_names

    if model in shipped_model_names():
        return None
    return (
        f"the model {model!r} is neither a directory nor a shipped model (the shipped "
        f"{DEFAULT_MODEL} is not in sparse_lens/pretrained/ yet); set SPARSE_LENS_MODEL to a "
        "checkpoint directory to run the notebooks"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    # Skips only while the shipped model is missing (remove once stdlib-sparse ships).
    reason = _model_missing()
    if reason is not None:
        pytest.skip(reason)
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
