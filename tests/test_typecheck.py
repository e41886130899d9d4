"""Runtime shape checks (sparse_lens.model.typecheck): one switch, clear errors, boundary only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from sparse_lens import SparseLensError
from sparse_lens.model import typecheck as tc


@tc.shape_checked
def pair_sum(x: Float[Tensor, "batch pos d"], y: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos"]:
    return (x + y).sum(-1)


@tc.shape_checked
def outer(x: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos"]:
    return pair_sum(x, x[:, :, :1].expand_as(x).clone())


def test_wrong_shapes_raise_a_shape_error_naming_the_parameter():
    assert pair_sum(torch.ones(2, 3, 4), torch.ones(2, 3, 4)).shape == (2, 3)
    with pytest.raises(tc.ShapeError, match=r"wrong input to pair_sum: .*parameter 'y'.*f32\[2,3,5\]") as error:
        pair_sum(torch.ones(2, 3, 4), torch.ones(2, 3, 5))
    assert "d=4" in str(error.value)  # the axis sizes bound so far
    assert isinstance(error.value, SparseLensError) and isinstance(error.value, TypeError)
    with pytest.raises(tc.ShapeError, match="parameter 'x'"):
        pair_sum(torch.ones(2, 4), torch.ones(2, 4))  # wrong rank


def test_the_switch_turns_checks_off_and_all_checks_nested_calls():
    previous = tc.typecheck("off")
    try:
        with pytest.raises(RuntimeError):  # torch's own error, unchecked
            pair_sum(torch.ones(2, 3, 4), torch.ones(2, 3, 5))
        tc.typecheck("boundary")
        assert tc.typecheck_mode() == "boundary"
        with pytest.raises(SparseLensError, match="one of boundary, all, off"):
            tc.typecheck("sometimes")
    finally:
        tc.typecheck(previous)


def test_env_var_is_read_and_validated(monkeypatch):
    monkeypatch.setenv(tc.ENV_VAR, "ALL")
    assert tc._mode_from_env() == "all"
    monkeypatch.delenv(tc.ENV_VAR)
    assert tc._mode_from_env() == "boundary"
    monkeypatch.setenv(tc.ENV_VAR, "yes")
    with pytest.raises(SparseLensError, match=tc.ENV_VAR):
        tc._mode_from_env()


def test_outside_pytest_a_wrong_shaped_tensor_to_a_module_is_a_clear_error():
    """No pytest import hook here: the checks are sparse-lens' own."""
    script = (
        "import sys, torch; sys.path.insert(0, 'tests')\n"
        "from helpers import tiny_model\n"
        "from sparse_lens.model.typecheck import ShapeError, typecheck\n"
        "from sparse_lens.model.graph import logits_from_resid\n"
        "m = tiny_model()\n"
        "try: m.blocks[0].mlp(torch.ones(5, m.cfg.d_in))\n"
        "except ShapeError as e: print('MLP', e)\n"
        "try: logits_from_resid(m, torch.ones(2, 5, m.cfg.d_model), torch.zeros(3, 5, dtype=torch.long))\n"
        "except ShapeError as e: print('HEAD', e)\n"
        "typecheck('off')\n"
        "try: m.blocks[0].mlp(torch.ones(5, 7))\n"
        "except ShapeError: print('still checked')\n"
        "except RuntimeError: print('OFF torch error')\n"
    )
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("MLP wrong input to MLP.forward:") and "parameter 'x'" in lines[0]
    assert lines[1].startswith("HEAD wrong input to logits_from_resid:") and "tokens" in lines[1]
    assert lines[2] == "OFF torch error"
