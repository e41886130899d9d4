"""Defaults that more than one module (or a CLI flag and its API function) share, stated once.

A default that belongs to one dataclass stays a field default there; what is here is read by
several callers that must agree (an API function, the CLI flag that calls it, the demo, the
maintainers' scripts). Import these names; never retype the numbers.
"""

from __future__ import annotations

HELDOUT_FRACTION = 0.02
"""Share of corpus files held out from training (the split is by file)."""

TARGET_LOSS = 0.15
"""Task loss (mean binary cross-entropy per prompt) a pruned circuit must reach; the paper's."""

N_PAIRS = 64
"""Contrast pairs a task is evaluated or a circuit validated on (the demo, `validate`,
`tasks eval`)."""

N_RANDOM_SETS = 20
"""Random node sets of the circuit's size and type mix in a validation report."""

MEAN_TOKENS = 65_536
"""Held-out pretraining tokens the mean cache averages over."""

N_EVAL_PAIRS = 256
"""Pairs per task in a shipped model's eval.json (and in scripts/task_scaling.py)."""

SHIPPED_PRUNE_STEPS = 200
"""Optimiser steps per search run the shipped circuits were pruned with (PruneConfig's own
default is smaller, to fit one task into about two minutes on a laptop)."""
