"""Post-hoc bridges between an already trained dense and sparse pair (both frozen).

Closed form first: per site a ridge regression dense -> sparse (the encoder's Linear) and
sparse -> dense (the decoder) on a few batches of residual streams. Then, optionally, Adam on
the bridges alone with the full bridge loss (:mod:`.loss`), whose KL terms the regression
cannot see. Batches are pure functions of (seed, step), as in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sparse_lens.bridges.hybrid import residuals_at_sites
from sparse_lens.bridges.loss import LossWeights, bridge_loss
from sparse_lens.bridges.module import Bridges
from sparse_lens.errors import SparseLensError


@dataclass(frozen=True)
class FitConfig:
    steps: int = 300
    """Adam steps after the closed form (0: the ridge solution only)."""
    batch_size: int = 4
    n_ctx: int = 128
    lr: float = 1e-3
    ridge: float = 1e-4
    """Ridge strength, relative to the mean input variance."""
    ridge_batches: int = 8
    encoder_frac: float | None = 0.25
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    time_limit_s: float | None = None

    def __post_init__(self):
        for name in ("batch_size", "n_ctx", "ridge_batches"):
            if getattr(self, name) < 1:
                raise SparseLensError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.steps < 0:
            raise SparseLensError(f"must be >= 0, got {self.steps}", field="steps")
        if self.encoder_frac is not None and not 0.0 < self.encoder_frac <= 1.0:
            raise SparseLensError(
                f"must be in (0, 1], got {self.encoder_frac}", field="encoder_frac"
            )
        if not self.lr > 0 or not self.ridge >= 0:
            raise SparseLensError("lr must be > 0 and ridge >= 0", field="lr")

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if k != "weights"},
            "weights": self.weights.to_dict(),
        }


@dataclass
class FitResult:
    bridges: Bridges
    history: list[dict[str, Any]]
    steps: int
    wall_s: float


def ridge_solve(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """Weight [out, in] and bias [out] minimising |x W^T + b - y|^2 + lam |W|^2, with lam =
    ``ridge`` times the mean variance of x's channels times the number of rows."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().mean())
    weight = torch.linalg.solve(
        gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc
    ).T
    return weight.float(), (my - mx @ weight.T).float()


@torch.no_grad()
def ridge_init_(dense, sparse, bridges: Bridges, batches: list[Tensor], ridge: float) -> None:
    """Set every encoder and decoder Linear to its closed-form regression on ``batches``."""
    xs: dict[int, list[Tensor]] = {s.index: [] for s in bridges.sites}
    ys: dict[int, list[Tensor]] = {s.index: [] for s in bridges.sites}
    for tokens in batches:
        _, h_dense = residuals_at_sites(dense, tokens, bridges.sites)
        _, h_sparse = residuals_at_sites(sparse, tokens, bridges.sites)
        for i in xs:
            xs[i].append(h_dense[i].reshape(-1, h_dense[i].shape[-1]))
            ys[i].append(h_sparse[i].reshape(-1, h_sparse[i].shape[-1]))
    for i in xs:
        x, y = torch.cat(xs[i]), torch.cat(ys[i])
        for linear, source, target in ((bridges.encoders[i], x, y), (bridges.decoders[i], y, x)):
            weight, bias = ridge_solve(source, target, ridge)
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)


def fit_bridges(
    dense,
    sparse,
    batch: Callable[[int], Tensor],
    config: FitConfig = FitConfig(),
    progress: bool = False,
) -> FitResult:
    """Fit bridges from ``dense`` to ``sparse`` (both frozen); ``batch(step)`` gives the
    [batch, pos] tokens of step ``step`` (the ridge uses steps 0..ridge_batches-1, Adam the
    following ones)."""
    started = time.perf_counter()
    for model in (dense, sparse):
        model.requires_grad_(False).eval()
    bridges = Bridges.for_pair(dense, sparse, config.encoder_frac, seed=config.seed)
    ridge_init_(
        dense, sparse, bridges, [batch(s) for s in range(config.ridge_batches)], config.ridge
    )
    optimizer = torch.optim.Adam(bridges.parameters(), lr=config.lr)
    history: list[dict[str, Any]] = []
    done = 0
    bar = tqdm(total=config.steps, desc="bridge fit", unit="step", disable=not progress)
    try:
        for step in range(config.steps):
            if (
                config.time_limit_s is not None
                and time.perf_counter() - started > config.time_limit_s
            ):
                break
            lr = config.lr * (1.0 - 0.9 * step / max(config.steps, 1))  # linear decay to 10%
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = bridge_loss(
                dense, sparse, bridges, batch(config.ridge_batches + step), config.weights
            )
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            nn.utils.clip_grad_norm_(bridges.parameters(), 1.0)
            optimizer.step()
            done = step + 1
            loss = float(terms.total.detach())
            history.append({"step": done, "loss": loss, "lr": lr, "sites": terms.per_site})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    finally:
        bar.close()
    return FitResult(bridges.eval(), history, done, time.perf_counter() - started)
