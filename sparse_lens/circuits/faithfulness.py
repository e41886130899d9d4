"""Does a circuit reproduce its model? Agreement, KL and loss, with bootstrap intervals.

A circuit is an explanation of a model only if, with everything else ablated, it makes the
model's predictions, not merely good ones: a pruned network that does the task better than the
model it came from is a new network found by the search. Given the two-answer logits of the
full model and of the circuit (every other node ablated) on the same prompts, this module
measures

- ``agreement``: the fraction of prompts where circuit and model pick the same answer;
- ``kl``: mean KL(model || circuit) between their two-answer distributions (nats);
- ``loss``: the circuit's task loss (mean binary CE), next to the model's;
- ``gain_fraction``: how much of the model's improvement over a reference (the empty circuit:
  every node ablated) the circuit recovers, ``(ref - circuit) / (ref - full)``; above 1 the
  circuit beats its model.

Intervals are percentile bootstraps over PAIRS (both prompts of a contrast pair stay together,
since they share everything but the contrast), seeded, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sparse_lens.circuits.evaluate import binary_loss

DEFAULT_MIN_AGREEMENT = 0.9
"""A circuit must pick the model's answer on at least this fraction of held-out prompts."""

DEFAULT_BOOTSTRAP = 1000
"""Bootstrap resamples for the 95% intervals."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


@dataclass(frozen=True)
class Faithfulness:
    """How closely a circuit reproduces its model on ``n_prompts`` prompts (``n_pairs`` pairs)."""

    n_prompts: int
    n_pairs: int
    agreement: Interval
    kl: Interval
    circuit_loss: Interval
    full_loss: Interval
    gain_fraction: Interval | None
    """Of the model's gain over the reference (empty circuit); None without a reference or
    when the model has no gain over it."""

    def meets(self, target_loss: float, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> bool:
        """Loss at or under the target AND agreement at or over ``min_agreement``."""
        return self.circuit_loss.value <= target_loss and self.agreement.value >= min_agreement


def two_answer_log_probs(pair_logits: Float[Tensor, "batch 2"]) -> Float[Tensor, "batch 2"]:
    """Log-probabilities over the two answers (a softmax restricted to them)."""
    return F.log_softmax(pair_logits.double(), dim=-1)


def per_prompt(
    full_logits: Float[Tensor, "batch 2"],
    circuit_logits: Float[Tensor, "batch 2"],
    label: Int[Tensor, " batch"],
) -> dict[str, Tensor]:
    """Per-prompt agreement (0/1), KL(model || circuit), circuit loss and model loss."""
    if full_logits.shape != circuit_logits.shape or full_logits.shape[0] != label.shape[0]:
        raise ValueError(
            f"logits {tuple(full_logits.shape)} and {tuple(circuit_logits.shape)} and labels "
            f"{tuple(label.shape)} must describe the same prompts"
        )
    log_p = two_answer_log_probs(full_logits)
    log_q = two_answer_log_probs(circuit_logits)
    return {
        "agreement": (full_logits.argmax(-1) == circuit_logits.argmax(-1)).double(),
        "kl": (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0),
        "circuit_loss": binary_loss(circuit_logits.double(), label),
        "full_loss": binary_loss(full_logits.double(), label),
    }


def _pair_groups(pair_index: Int[Tensor, " batch"]) -> tuple[Tensor, int]:
    """Each prompt's pair as 0..n_pairs-1."""
    pairs, inverse = torch.unique(pair_index, return_inverse=True)
    return inverse, len(pairs)


def bootstrap_means(
    values: dict[str, Tensor],
    pair_index: Int[Tensor, " batch"],
    *,
    n_resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Means of each per-prompt quantity under ``n_resamples`` resamplings of whole pairs.

    Returns, per key, a [n_resamples] tensor of resampled means (prompt-weighted, so a pair
    counted twice counts both its prompts twice)."""
    group, n_pairs = _pair_groups(pair_index)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_pairs, (n_resamples, n_pairs), generator=generator)
    weight = torch.zeros(n_resamples, n_pairs, dtype=torch.float64)
    weight.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    prompts_per_pair = torch.bincount(group, minlength=n_pairs).double()
    denominator = weight @ prompts_per_pair
    out = {}
    for key, value in values.items():
        pair_sums = torch.zeros(n_pairs, dtype=torch.float64).scatter_add_(0, group, value.double())
        out[key] = (weight @ pair_sums) / denominator
    return out


def interval(point: float, samples: Tensor) -> Interval:
    """``point`` with the 2.5th and 97.5th percentiles of its bootstrap ``samples``."""
    low, high = torch.quantile(samples.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return Interval(float(point), float(low), float(high))


def circuit_faithfulness(
    full_logits: Float[Tensor, "batch 2"],
    circuit_logits: Float[Tensor, "batch 2"],
    label: Int[Tensor, " batch"],
    pair_index: Int[Tensor, " batch"],
    *,
    reference_logits: Float[Tensor, "batch 2"] | None = None,
    n_resamples: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> Faithfulness:
    """Agreement, KL and losses of a circuit against its model, with pair-bootstrap intervals.

    ``reference_logits`` (usually the empty circuit's) enables ``gain_fraction``; its interval
    resamples the same pairs for all three losses, so it is a ratio of matched means."""
    values = per_prompt(full_logits, circuit_logits, label)
    if reference_logits is not None:
        values["reference_loss"] = binary_loss(reference_logits.double(), label)
    means = {k: float(v.mean()) for k, v in values.items()}
    samples = bootstrap_means(values, pair_index, n_resamples=n_resamples, seed=seed)
    gain = None
    if reference_logits is not None and means["reference_loss"] > means["full_loss"]:

        def ratio(ref: Tensor | float, circ: Tensor | float, full: Tensor | float):
            return (ref - circ) / (ref - full)

        point = ratio(means["reference_loss"], means["circuit_loss"], means["full_loss"])
        resampled = ratio(samples["reference_loss"], samples["circuit_loss"], samples["full_loss"])
        gain = interval(point, resampled[torch.isfinite(resampled)])
    return Faithfulness(
        n_prompts=int(label.shape[0]),
        n_pairs=_pair_groups(pair_index)[1],
        agreement=interval(means["agreement"], samples["agreement"]),
        kl=interval(means["kl"], samples["kl"]),
        circuit_loss=interval(means["circuit_loss"], samples["circuit_loss"]),
        full_loss=interval(means["full_loss"], samples["full_loss"]),
        gain_fraction=gain,
    )


def target_from_fraction(full_loss: float, empty_loss: float, fraction: float) -> float:
    """The loss that recovers ``fraction`` of the model's gain over the empty circuit
    (``--target-frac``): ``empty - fraction * (empty - full)``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return empty_loss - fraction * (empty_loss - full_loss)
