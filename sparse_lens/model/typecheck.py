"""Runtime shape checks on the public tensor functions, at the boundary with user code.

Functions decorated with :func:`shape_checked` have their jaxtyping annotations
(``Float[Tensor, "batch pos d_model"]``) checked by beartype when user code calls them: a wrong
rank, a wrong dtype kind, or dimensions that disagree between arguments (two ``batch`` sizes)
raise :class:`ShapeError` naming the function, the parameter, the expected and the actual shape.
Calls made from inside a checked call are not checked again: the model's own calls between its
modules are consistent by construction, and a check costs ~50 us, which a forward pass through
every block would pay many times over.

One switch, the environment variable ``SPARSE_LENS_TYPECHECK`` (read at import) or
:func:`typecheck` at run time: ``"boundary"`` (the default) checks the outermost call only,
``"all"`` checks every nested call too (slow; for debugging sparse-lens itself), ``"off"`` checks
nothing. ``torch.compile`` traces are never checked (the check would break the graph).
The test suite additionally runs every annotated function of the package under beartype
(pytest's ``--jaxtyping-packages``).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from beartype import beartype
from jaxtyping import TypeCheckError, jaxtyped

from sparse_lens.errors import SparseLensError

Mode = Literal["boundary", "all", "off"]
MODES: tuple[Mode, ...] = ("boundary", "all", "off")
ENV_VAR = "SPARSE_LENS_TYPECHECK"

F = TypeVar("F", bound=Callable)


class ShapeError(SparseLensError, TypeError):
    """A tensor of the wrong shape or dtype passed to a public sparse-lens function (a TypeError
    too, as jaxtyping's own errors are)."""


def _mode_from_env() -> Mode:
    value = os.environ.get(ENV_VAR, "boundary").strip().lower() or "boundary"
    if value not in MODES:
        raise SparseLensError(f"must be one of {', '.join(MODES)}, got {value!r}", field=ENV_VAR)
    return value  # type: ignore[return-value]


class _State(threading.local):
    depth = 0


_mode: Mode = _mode_from_env()
_state = _State()


def typecheck(mode: str | bool = "boundary") -> Mode:
    """Set the runtime shape checks (``True`` = ``"boundary"``, ``False`` = ``"off"``); returns
    the previous mode, so ``typecheck(typecheck("all"))`` style restoring works."""
    global _mode
    if isinstance(mode, bool):
        mode = "boundary" if mode else "off"
    if mode not in MODES:
        raise SparseLensError(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    previous, _mode = _mode, mode
    return previous


def typecheck_mode() -> Mode:
    return _mode


def _shape_error(fn: Callable, error: TypeCheckError) -> ShapeError:
    """jaxtyping's multi-line report, kept to what names the problem: the parameter, the
    expected and actual types, and the axis sizes bound so far."""
    lines = [line for line in str(error).splitlines() if line and not line.startswith("---")]
    keep = [line for line in lines if line.startswith(("The problem", "Actual value", "Expected"))]
    marker = "The current values for each jaxtyping axis annotation are as follows."
    axes = lines[lines.index(marker) + 1 :] if marker in lines else []
    if axes:
        keep.append(f"(axis sizes so far: {', '.join(axes)})")
    return ShapeError(f"wrong input to {fn.__qualname__}: {' '.join(keep) or lines[0]}")


def shape_checked(fn: F) -> F:
    """Check ``fn``'s jaxtyping annotations when it is called (module docstring)."""
    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _mode == "off" or (_mode == "boundary" and _state.depth) or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        _state.depth += 1
        try:
            return checked(*args, **kwargs)
        except TypeCheckError as error:
            raise _shape_error(fn, error) from None
        finally:
            _state.depth -= 1

    return wrapper  # type: ignore[return-value]
