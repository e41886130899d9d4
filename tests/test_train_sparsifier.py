"""The top-k projection with per-unit minimum, against a slow sort-based reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from sparse_lens.train.sparsifier import (
    Sparsifier,
    UnitLayout,
    kth_largest,
    nonzero_budget,
    project_,
    topk_mask,
)


def reference_mask(w: torch.Tensor, k: int, unit_rows, j: int) -> torch.Tensor:
    """Obviously-correct version: full sorts, Python loops over units."""
    flat = w.abs().reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if unit_rows is not None and j > 0:
        index = unit_rows(torch.arange(flat.numel()).view(w.shape))
        for row in index:
            order = torch.argsort(flat[row], descending=True)
            keep[row[order[: min(j, row.numel())]]] = True
    remaining = k - int(keep.sum())
    if remaining > 0:
        free = (~keep).nonzero().squeeze(1)
        order = torch.argsort(flat[free], descending=True)
        keep[free[order[:remaining]]] = True
    return keep.view(w.shape)


def qkv_units(t):  # [head, d_in, d_head] -> [head * d_head, d_in] (per output channel)
    return t.permute(0, 2, 1).reshape(-1, t.shape[1])


def columns(t):  # [d_in, d_mlp] -> per MLP neuron over its inputs
    return t.T


def rows(t):  # [d_mlp, d_model] -> per MLP neuron over its outputs
    return t


LAYOUTS: list[tuple[tuple[int, ...], Callable | None]] = [
    ((4, 24, 16), qkv_units),
    ((24, 96), columns),
    ((96, 24), rows),
    ((300, 320), columns),  # large enough for the bracketed threshold search
    ((50, 24), None),
    ((37,), None),
]


@pytest.mark.parametrize("shape,unit_rows", LAYOUTS)
@pytest.mark.parametrize("density", [0.5, 1 / 16, 0.004])
def test_mask_matches_reference(shape, unit_rows, density):
    generator = torch.Generator().manual_seed(hash((shape, density)) % 2**31)
    w = torch.randn(shape, generator=generator)
    k = nonzero_budget(w.numel(), density)
    index = None if unit_rows is None else UnitLayout.of(shape, unit_rows)
    mask = topk_mask(w, k, index, min_per_unit=4)
    expected = reference_mask(w, k, unit_rows, 4)
    assert torch.equal(mask, expected)
    if unit_rows is not None:
        per_unit = unit_rows(mask.to(torch.int64)).sum(1)
        fan = unit_rows(w).shape[1]
        assert int(per_unit.min()) >= min(4, fan)
        assert int(mask.sum()) == max(k, unit_rows(w).shape[0] * min(4, fan))
    else:
        assert int(mask.sum()) == k


def test_project_zeroes_in_place_and_keeps_values():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=generator)
    original = w.clone()
    index = UnitLayout.of(w.shape, columns)
    k = 200
    storage = w.data_ptr()
    project_(w, k, index, min_per_unit=4)
    assert w.data_ptr() == storage
    assert int(torch.count_nonzero(w)) == k
    kept = w != 0
    assert torch.equal(w[kept], original[kept])
    assert int(columns(kept).sum(1).min()) >= 4


def test_forced_entries_win_when_budget_is_too_small():
    """k < j * n_units: every unit still keeps j entries (documented; count exceeds k)."""
    w = torch.randn(32, 40, generator=torch.Generator().manual_seed(1))
    index = UnitLayout.of(w.shape, columns)  # 40 units of fan 32
    project_(w, k=10, units=index, min_per_unit=4)
    assert int(torch.count_nonzero(w)) == 40 * 4
    assert int(columns(w != 0).sum(1).min()) == 4


def test_ties_keep_at_least_k():
    w = torch.zeros(20, 20)
    w[:, :5] = 1.0  # 100 tied entries of magnitude 1
    mask = topk_mask(w, 30, None, 0)
    assert int(mask.sum()) >= 30
    assert bool(mask[:, :5].all())  # every tied entry at the threshold survives
    zeros = torch.zeros(50)
    project_(zeros, 10, None, 0)  # all-zero tensors (fresh biases) are left as they are
    assert int(torch.count_nonzero(zeros)) == 0


def test_full_budget_is_a_no_op():
    w = torch.randn(10, 10)
    before = w.clone()
    project_(w, 100, UnitLayout.of(w.shape, rows), 4)
    assert torch.equal(w, before)


@pytest.mark.parametrize(
    "values",
    [
        torch.randn(200_000, generator=torch.Generator().manual_seed(2)).abs(),
        torch.randint(0, 5, (150_000,), generator=torch.Generator().manual_seed(3)).float(),
        torch.cat(
            [torch.zeros(100_000), torch.rand(1000, generator=torch.Generator().manual_seed(4))]
        ),
        torch.linspace(0, 1, 70_000),
    ],
)
@pytest.mark.parametrize("fraction", [1e-4, 0.01, 0.3, 0.999])
def test_kth_largest_exact(values, fraction):
    r = max(1, int(fraction * values.numel()))
    expected = torch.sort(values, descending=True).values[r - 1]
    assert kth_largest(values, r) == expected


def test_projection_does_not_touch_global_rng():
    w = torch.randn(400, 400)
    state = torch.get_rng_state()
    project_(w, 1000, UnitLayout.of(w.shape, columns), 4)
    assert torch.equal(torch.get_rng_state(), state)


@dataclass
class FakeTarget:
    name: str
    param: torch.nn.Parameter
    kind: str
    unit_rows: Callable | None


def make_targets():
    generator = torch.Generator().manual_seed(5)

    def p(*shape):
        return torch.nn.Parameter(torch.randn(*shape, generator=generator))

    return [
        FakeTarget("W_Q", p(2, 16, 8), "matrix", qkv_units),
        FakeTarget("W_in", p(16, 64), "matrix", columns),
        FakeTarget("W_out", p(64, 16), "matrix", rows),
        FakeTarget("W_E", p(50, 16), "embedding", None),
        FakeTarget("b_in", p(64), "bias", None),
    ]


def test_sparsifier_budgets_and_adam_state_untouched():
    targets = make_targets()
    params = [t.param for t in targets]
    optimizer = torch.optim.Adam(params, lr=0.1)
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    moments = {
        i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(optimizer.state.values())
    }
    grads = [p.grad.clone() for p in params]
    sparsifier = Sparsifier(targets, min_per_unit=4, embed_density_factor=4.0)
    budgets = sparsifier.project(l0=1 / 16)
    for target in targets:
        density = 1 / 16 if target.kind == "matrix" else 1 / 4
        k = nonzero_budget(target.param.numel(), density)
        assert budgets[target.name] == k
        nnz = int(torch.count_nonzero(target.param))
        if target.unit_rows is None:
            assert nnz == k
        else:
            n_units, fan = target.unit_rows(target.param).shape
            assert nnz == max(k, n_units * min(4, fan))
            assert int(target.unit_rows(target.param != 0).sum(1).min()) >= 4
    for i, state in enumerate(optimizer.state.values()):
        for key, value in state.items():
            assert torch.equal(value, moments[i][key])
    for param, grad in zip(params, grads, strict=True):
        assert torch.equal(param.grad, grad)


def test_sparsifier_rejects_unknown_kind():
    target = FakeTarget("w", torch.nn.Parameter(torch.ones(3)), "norm", None)
    with pytest.raises(ValueError, match="unknown sparse target kind"):
        Sparsifier([target])


def test_nonzero_budget():
    assert nonzero_budget(1000, 1.0) == 1000
    assert nonzero_budget(1000, 1 / 16) == 62
    assert nonzero_budget(10, 1e-6) == 1
    with pytest.raises(ValueError):
        nonzero_budget(10, 0.0)
