"""Top-k magnitude projection with a per-unit minimum: the heart of weight-sparse training.

After every optimizer step each target tensor (weight matrix, embedding, bias) is projected onto
its ``k`` largest-magnitude entries and the rest are set to zero *in the weights*, so every
accessor, edge count and saved file sees the real sparse model. Gradients and Adam moments are
left dense and untouched, so a zeroed weight can regrow if its gradient keeps pushing.

Per-unit minimum (REFERENCE section 2): before the global top-k, each unit (MLP neuron, q/k/v
channel, output channel, ...) force-keeps its ``j`` largest entries, so no unit is cut off from
the network. Which axis is a unit is the model's business: ``sparse_targets(model)`` hands us,
per tensor, ``unit_rows(t)`` returning a ``[n_units, fan]`` view whose rows are the units. This
module is generic over that: it never looks at parameter names.

Semantics of one projection with budget ``k``:

1. ``forced`` = the ``j`` largest ``|w|`` of every unit (all of them when ``fan <= j``);
2. the remaining budget ``k - |forced|`` is filled with the globally largest ``|w|`` of the rest;
3. everything else is zeroed. The kept set has exactly ``k`` entries, with two documented
   exceptions: ties at the threshold magnitude are all kept (so ``>= k`` only through ties,
   which do not happen for trained float weights but do for e.g. all-zero biases, where keeping
   extra zeros changes nothing), and when ``k < j * n_units`` the forced entries alone exceed
   the budget; they are all kept (the minimum wins over the budget).

Efficiency (this runs every step on every matrix). Sorting is never needed; the threshold is an
order statistic. ``torch.kthvalue`` (quickselect) is the simple exact route; for big tensors we
first narrow the search with a fixed random sample of 4096 entries: the sample's quantiles bracket
the threshold, one comparison pass counts what lies above the bracket, and the exact threshold is
the right order statistic of the few entries inside it. That is exact and ~2-4x faster than
kthvalue on a whole 2048x2048 matrix (one CPU thread); if the bracket misses (it almost never
does), we fall back to kthvalue. On CPU the whole projection runs single-threaded (see
:func:`single_threaded`). The sample indices come from a private generator, so the projection never touches the
global RNG (resumed runs stay bit-identical). The per-unit top-j is a ``topk`` with ``k = j``
along the unit rows (linear time); the unit layout is turned into flat indices once per tensor
and cached, because ``unit_rows`` may return a reshaped copy rather than a writable view.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: Below this many elements the bracketing pass costs more than it saves.
_BRACKET_MIN_NUMEL = 1 << 16
_SAMPLE_SIZE = 4096
#: Half-width of the bracket in quantile units (>= 5 standard errors of a 4k-sample quantile).
_BRACKET_HALF_WIDTH = 0.02


@runtime_checkable
class Target(Protocol):
    """What the sparsifier needs from a ``sparse_lens.model.sparsity.SparseTarget``."""

    name: str
    param: Tensor
    kind: str
    unit_rows: Callable[[Tensor], Tensor] | None


def nonzero_budget(numel: int, density: float) -> int:
    """How many entries a tensor of ``numel`` elements keeps at ``density`` (at least 1)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return min(numel, max(1, round(density * numel)))


@dataclass(frozen=True)
class UnitLayout:
    """How a tensor's entries group into units (rows that keep a minimum of nonzeros).

    ``rows(t)`` is the model's ``unit_rows``: a view or a reshaped copy ``[n_units, fan]``.
    ``index`` holds the flat position of every entry in that layout, so the few per-unit
    winners found in row layout can be mapped back to the tensor whatever ``rows`` does.
    """

    rows: Callable[[Tensor], Tensor]
    index: Tensor

    @classmethod
    def of(cls, shape: Sequence[int], unit_rows: Callable[[Tensor], Tensor]) -> UnitLayout:
        return cls(unit_rows, unit_index(shape, unit_rows))

    def to(self, device: torch.device | str) -> UnitLayout:
        return UnitLayout(self.rows, self.index.to(device))


def unit_index(
    shape: Sequence[int], unit_rows: Callable[[Tensor], Tensor]
) -> Int[Tensor, "units fan"]:
    """Flat indices of a tensor laid out as its units: row ``u`` lists unit ``u``'s entries.

    Applying ``unit_rows`` to ``arange(numel).view(shape)`` works whether it returns a view or a
    reshaped copy. int32 where it fits: this cache costs 4 bytes per weight.
    """
    numel = math.prod(shape)
    dtype = torch.int32 if numel < 2**31 else torch.int64
    index = torch.arange(numel, dtype=dtype).view(*shape)
    rows = unit_rows(index)
    if rows.dim() != 2:
        raise ValueError(
            f"unit_rows must return a 2-D [n_units, fan] tensor, got shape {tuple(rows.shape)}"
        )
    return rows.contiguous()


def kth_largest(values: Float[Tensor, " n"], r: int) -> Float[Tensor, ""]:
    """The ``r``-th largest entry of ``values`` (1-based), found without a full sort."""
    n = values.numel()
    if not 1 <= r <= n:
        raise ValueError(f"r must be in [1, {n}], got {r}")
    if n >= _BRACKET_MIN_NUMEL:
        found = _kth_largest_bracketed(values, r)
        if found is not None:
            return found
    return torch.kthvalue(values, n - r + 1).values


_SAMPLES: dict[tuple[int, torch.device], Tensor] = {}


def _sample_index(n: int, device: torch.device) -> Tensor:
    key = (n, device)
    if key not in _SAMPLES:
        generator = torch.Generator().manual_seed(n)
        _SAMPLES[key] = torch.randint(0, n, (_SAMPLE_SIZE,), generator=generator).to(device)
    return _SAMPLES[key]


def _kth_largest_bracketed(values: Tensor, r: int) -> Tensor | None:
    """Exact r-th largest via a sample-quantile bracket; None when the bracket misses."""
    n = values.numel()
    sample, _ = values[_sample_index(n, values.device)].sort()
    m = sample.numel()
    q = 1.0 - r / n  # quantile of the threshold from below
    lo = sample[max(0, math.floor((q - _BRACKET_HALF_WIDTH) * m))]
    hi = sample[min(m - 1, math.ceil((q + _BRACKET_HALF_WIDTH) * m))]
    above = int(torch.count_nonzero(values > hi))  # bool .sum() is ~10x slower on CPU
    if above >= r:
        return None
    inside = values[(values >= lo) & (values <= hi)]
    need = r - above
    if inside.numel() < need:
        return None
    return torch.kthvalue(inside, inside.numel() - need + 1).values


@torch.no_grad()
def topk_mask(
    weight: Float[Tensor, "*shape"],
    k: int,
    units: UnitLayout | None = None,
    min_per_unit: int = 4,
) -> Bool[Tensor, "*shape"]:
    """Boolean mask (same shape as ``weight``) of the entries the projection keeps.

    With ``units``, each unit force-keeps its ``min_per_unit`` largest ``|w|`` before the global
    top-k fills the rest of the budget.
    """
    numel = weight.numel()
    score = weight.detach().abs().reshape(-1)  # a fresh tensor: we may overwrite it
    forced = None
    if units is not None and min_per_unit > 0:
        rows = units.rows(score.view(weight.shape))  # [n_units, fan]: a view or a strided copy
        j = min(min_per_unit, rows.shape[1])
        top = rows.topk(j, dim=1, sorted=False).indices  # linear time for small j
        forced = units.index.gather(1, top).reshape(-1).long()
    n_forced = 0 if forced is None else forced.numel()
    remaining = k - n_forced
    if remaining >= numel - n_forced:
        return torch.ones_like(weight, dtype=torch.bool)
    if remaining <= 0:
        mask = torch.zeros(numel, dtype=torch.bool, device=score.device)
    else:
        if forced is not None:
            # |w| >= 0, so -1 ranks every forced entry below every free one.
            score[forced] = -1.0
        threshold = kth_largest(score, remaining)
        mask = score >= threshold
    if forced is not None:
        mask[forced] = True
    return mask.view(weight.shape)


@torch.no_grad()
def project_(
    weight: Float[Tensor, "*shape"],
    k: int,
    units: UnitLayout | None = None,
    min_per_unit: int = 4,
) -> Float[Tensor, "*shape"]:
    """Zero all but the top-``k`` (with per-unit minimum) entries of ``weight`` in place.

    A no-op when ``k`` covers the whole tensor. Returns ``weight``.
    """
    if k < weight.numel():
        mask = topk_mask(weight, k, units, min_per_unit)
        weight.masked_fill_(mask.logical_not_(), 0.0)
    return weight


@dataclass
class Sparsifier:
    """Projects every target of a model onto its scheduled number of nonzeros.

    Matrices keep a fraction ``l0`` of their entries; embeddings and biases keep
    ``min(1, embed_density_factor * l0)`` (official runs keep them ~4x denser). The same call on
    every data-parallel rank gives the same result, because the weights are identical there.
    """

    targets: Sequence[Target]
    min_per_unit: int = 4
    embed_density_factor: float = 4.0
    _units: dict[str, UnitLayout | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.targets = list(self.targets)
        for target in self.targets:
            if target.kind not in ("matrix", "embedding", "bias"):
                raise ValueError(f"{target.name}: unknown sparse target kind {target.kind!r}")
            units = None
            if target.unit_rows is not None and self.min_per_unit > 0:
                units = UnitLayout.of(tuple(target.param.shape), target.unit_rows)
                units = units.to(target.param.device)
            self._units[target.name] = units

    def density(self, kind: str, l0: float) -> float:
        """Fraction of entries a tensor of ``kind`` keeps when matrices keep ``l0``."""
        if kind == "matrix":
            return l0
        return min(1.0, self.embed_density_factor * l0)

    def budget(self, target: Target, l0: float) -> int:
        """Number of nonzeros ``target`` keeps at matrix density ``l0``."""
        return nonzero_budget(target.param.numel(), self.density(target.kind, l0))

    def units(self, name: str) -> UnitLayout | None:
        return self._units[name]

    @torch.no_grad()
    def project(self, l0: float) -> dict[str, int]:
        """Project every target in place at matrix density ``l0``; returns k per target."""
        budgets: dict[str, int] = {}
        on_cpu = any(t.param.device.type == "cpu" for t in self.targets)
        with single_threaded(on_cpu):
            for target in self.targets:
                k = self.budget(target, l0)
                budgets[target.name] = k
                project_(target.param.data, k, self._units[target.name], self.min_per_unit)
        return budgets

    def count_nonzero(self) -> dict[str, int]:
        return {t.name: int(torch.count_nonzero(t.param.detach())) for t in self.targets}


@contextlib.contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block (restored after; ~2 us per switch).

    The projection is hundreds of small memory-bound ops. On CPU, OpenMP parallel regions cost
    more than they save at these sizes (measured: 17 ms on one thread vs 33 ms on two for the
    ``cpu`` preset on an idle 2-core machine), and on a shared, busy machine every region can
    stall for a scheduler time slice waiting for a descheduled worker (0.6-2.6 s per projection
    measured on two threads vs 30-50 ms on one).
    """
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sparsity_report(targets: Iterable[Target]) -> dict[str, float]:
    """Fraction of nonzeros per target kind (for logs)."""
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for target in targets:
        kept[target.kind] = kept.get(target.kind, 0) + int(
            torch.count_nonzero(target.param.detach())
        )
        total[target.kind] = total.get(target.kind, 0) + target.param.numel()
    return {kind: kept[kind] / total[kind] for kind in kept}
