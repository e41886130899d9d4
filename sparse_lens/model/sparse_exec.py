"""Sparse execution of the sublayer matmuls when the weights are not being trained.

Sparsity lives in the stored weights (zeros in dense tensors), so by default a 1/16-dense model
costs what a dense one does. Forwards that do not train the weights (inference, mean caches,
pruning, validation: no gradient, or gradient w.r.t. activations and masks only) can instead
run a weight matrix as a CSR sparse matmul. Whether that pays depends on the shape, the density,
the number of rows, the device and the thread count, and crossover points measured on one
machine say little about another; so the choice is made PER MATRIX by timing: the first time a
(shape, density, rows, device, dtype, threads) bucket is seen, the dense and sparse products are
timed once on the real input and the faster is remembered for the process (:data:`COST_MODEL`).
Sparse must beat dense by :data:`MARGIN` to be chosen, so a noisy tie stays dense.

When the weights may receive a gradient (grad enabled and a source weight requires grad: the
training forward), the dense path always runs, unchanged. The sparse product equals the dense
one up to float summation order (a test holds it to 1e-5).

Switches, innermost first: :func:`sparse_execution` (a context manager overriding everything
inside it), the config's runtime flag ``cfg.sparse_exec`` (``SparseTransformer.
set_sparse_execution``), and the environment variable ``SPARSE_LENS_SPARSE_EXEC=0`` (off for the
whole process).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

DENSITY_THRESHOLD = 0.25
"""Matrices denser than this are never timed: CSR cannot win there on any common backend."""
MIN_MACS = 1 << 24
"""Products of fewer multiply-adds (rows x d_in x d_out) stay dense without timing: they take
well under a millisecond, where CSR's fixed costs dominate, and a timing that small is mostly
noise. It also keeps tiny models (tests) on one deterministic path."""
MARGIN = 0.8
"""The sparse product is chosen only if it takes at most this fraction of the dense time."""
_SPARSE_DTYPES = (torch.float32, torch.float64)

COST_MODEL: dict[tuple, bool] = {}
"""Measured decisions: bucket key -> True where the sparse product won."""

_override: list[tuple[bool, bool]] = []  # (enabled, always), innermost last
_env_enabled = os.environ.get("SPARSE_LENS_SPARSE_EXEC", "1").lower() not in ("0", "off", "false")


@contextlib.contextmanager
def sparse_execution(enabled: bool = True, *, always: bool = False) -> Iterator[None]:
    """Switch the sparse path on (where it wins) or off for every model inside the block.

    ``always`` skips the cost model: every matrix at most :data:`DENSITY_THRESHOLD` dense runs
    as CSR, faster or not (for tests and benchmarks of the sparse product itself).
    """
    _override.append((bool(enabled), bool(always)))
    try:
        yield
    finally:
        _override.pop()


def _wanted(config_flag: bool) -> bool:
    if _override:
        return _override[-1][0]
    return _env_enabled and config_flag


def _always() -> bool:
    return bool(_override) and _override[-1][1]


class _CsrProduct(torch.autograd.Function):
    """x @ W as CSR products: forward W^T @ x^T, backward (w.r.t. x only) W @ grad^T."""

    @staticmethod
    def forward(ctx, x: Tensor, w_t: Tensor, w: Tensor) -> Tensor:
        ctx.w = w
        return (w_t @ x.T).T.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return (ctx.w @ grad.T).T.contiguous(), None, None


class SparseMatmul:
    """One weight matrix's product ``x @ W + b``, dense or CSR, as the cost model decides.

    The owner calls it with the weight in [d_in, d_out] layout (or a function building it, so
    a concatenated weight is only assembled when needed) and the parameters it is made of; the
    CSR copies are rebuilt when any of those parameters changes (their in-place version or
    storage). It is a plain object, not a Module: nothing of it is saved or moved with the model.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._density = 1.0
        self._csr: tuple[Tensor, Tensor] | None = None

    def __call__(
        self,
        x: Tensor,
        weight: Tensor | Callable[[], Tensor],
        bias: Tensor | None,
        sources: tuple[Tensor, ...],
        enabled: bool = True,
    ) -> Tensor:
        """``F.linear(x, W.T, bias)``, or the same through CSR where that is faster."""
        out = self.sparse_or_none(x, weight, bias, sources, enabled)
        if out is None:
            return F.linear(x, _materialise(weight).T, bias)
        return out

    def sparse_or_none(
        self,
        x: Tensor,
        weight: Tensor | Callable[[], Tensor],
        bias: Tensor | None,
        sources: tuple[Tensor, ...],
        enabled: bool = True,
    ) -> Tensor | None:
        """The sparse product, or None where the dense path should run (the caller's own)."""
        if not _wanted(enabled) or x.dtype not in _SPARSE_DTYPES or x.numel() == 0:
            return None
        if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
            return None  # the weights are training: keep the dense path and its weight gradient
        if bias is not None and torch.is_grad_enabled() and bias.requires_grad:
            return None
        self._refresh(weight, sources, x.dtype)
        if self._density > DENSITY_THRESHOLD:
            return None
        w_t, w = self._csr
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] * w.numel() < MIN_MACS and not _always():
            return None
        key = (
            tuple(w.shape),
            round(self._density, 3),
            _bucket(rows.shape[0]),
            x.device.type,
            x.dtype,
            torch.get_num_threads(),
        )
        if not _always():
            if key not in COST_MODEL:
                COST_MODEL[key] = _sparse_wins(rows.detach(), _materialise(weight), w_t)
            if not COST_MODEL[key]:
                return None
        out = _CsrProduct.apply(rows, w_t, w)
        if bias is not None:
            out = out + bias
        return out.view(*x.shape[:-1], w.shape[1])

    def _refresh(self, weight, sources: tuple[Tensor, ...], dtype: torch.dtype) -> None:
        key = tuple((s.data_ptr(), s._version, s.device, s.dtype) for s in sources) + (dtype,)
        if key == self._key:
            return
        with torch.no_grad():
            w = _materialise(weight).detach().to(dtype)
            self._density = float(torch.count_nonzero(w)) / max(1, w.numel())
            self._csr = None
            if self._density <= DENSITY_THRESHOLD:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
                    self._csr = (w.T.contiguous().to_sparse_csr(), w.contiguous().to_sparse_csr())
        self._key = key


def _materialise(weight: Tensor | Callable[[], Tensor]) -> Tensor:
    return weight() if callable(weight) else weight


def _bucket(n_rows: int) -> int:
    """Rows rounded up to a power of two: one measurement covers a range of batch sizes."""
    return 1 << max(0, n_rows - 1).bit_length()


def _sparse_wins(
    x: Tensor, weight: Tensor, w_t: Tensor, repeats: int = 7, budget_s: float = 0.25
) -> bool:
    """Time the dense and the CSR product on ``x``: interleaved, best of ``repeats`` (at least
    two, fewer once ``budget_s`` is spent), so a load spike on a shared machine rarely decides."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        w_dense_t = weight.detach().T

        def dense() -> None:
            F.linear(x, w_dense_t)

        def sparse() -> None:
            (w_t @ x.T).T.contiguous()

        best = {dense: float("inf"), sparse: float("inf")}
        for run in (dense, sparse):  # warm-up (allocations, MKL handles)
            run()
        began = time.perf_counter()
        for i in range(repeats):
            if i >= 2 and time.perf_counter() - began > budget_s:
                break
            for run in (dense, sparse):
                sync()
                start = time.perf_counter()
                run()
                sync()
                best[run] = min(best[run], time.perf_counter() - start)
    return best[sparse] <= MARGIN * best[dense]
