"""The two schedules of weight-sparse training: L0 annealing and the "sharkfin" learning rate.

Both are pure functions of the step index, so a resumed run needs nothing but the step to pick
up exactly where it stopped (there is no scheduler object with hidden state to checkpoint).

L0 (the fraction of weights kept) goes linearly from 1 (dense) to the target between
``anneal_start`` and ``anneal_end`` (fractions of training; the paper uses 1% to 50%, and 80%
for its sparsest models). Removing the annealing hurts.

The learning rate is ``base * warmup * decay * sqrt(L0_target / L0(t))``: linear warmup over
the first ``warmup_frac`` of training, linear decay to zero, and an L0 factor that is <= 1: low
while the model is still dense, rising to 1 as it sparsifies. The paper calls that factor
necessary for annealing to help; a reimplementation that used an unnormalised ``1/sqrt(L0)``
had an 8x larger final LR and its weights collapsed. With ``L0_target = 1`` (a dense model) the
factor is 1 and this is the standard warmup + linear decay schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Learning rate and weight density as functions of the step ``t`` in ``[0, total_steps)``."""

    total_steps: int
    lr: float
    l0_target: float = 1.0
    anneal_start: float = 0.01
    anneal_end: float = 0.5
    warmup_frac: float = 0.01

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 < self.l0_target <= 1.0:
            raise ValueError(f"l0_target must be in (0, 1], got {self.l0_target}")
        if not 0.0 <= self.anneal_start <= self.anneal_end <= 1.0:
            raise ValueError(
                "need 0 <= anneal_start <= anneal_end <= 1, got "
                f"{self.anneal_start} and {self.anneal_end}"
            )
        if not 0.0 <= self.warmup_frac <= 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1], got {self.warmup_frac}")

    def l0(self, step: int) -> float:
        """Fraction of matrix weights kept after optimizer step ``step``."""
        start = self.anneal_start * self.total_steps
        end = self.anneal_end * self.total_steps
        # The projection after step t uses the density reached at t + 1 steps done, so the
        # last annealing step lands exactly on the target.
        done = step + 1
        if done <= start:
            return 1.0
        if done >= end:
            return self.l0_target
        frac = (done - start) / (end - start)
        return 1.0 + frac * (self.l0_target - 1.0)

    def warmup(self, step: int) -> float:
        warmup_steps = self.warmup_frac * self.total_steps
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / warmup_steps)

    def decay(self, step: int) -> float:
        """Linear decay to zero: 1 at step 0, 1/total at the last step."""
        return max(0.0, 1.0 - step / self.total_steps)

    def l0_factor(self, step: int) -> float:
        """``sqrt(L0_target / L0(t))``: the sharkfin factor, <= 1 and 1 once fully sparse."""
        return math.sqrt(self.l0_target / self.l0(step))

    def learning_rate(self, step: int) -> float:
        """The LR for optimizer step ``step``."""
        return self.lr * self.warmup(step) * self.decay(step) * self.l0_factor(step)
