"""Find a task's minimal circuit: learn node masks, then discretise, bisect and calibrate.

1. **Optimise** (:func:`optimise_masks`). Every node has a mask ``tau`` (:mod:`.masks`); the
   loss is the task's binary CE plus ``k_coef * (number of open nodes)`` (the sum of the binary
   gates, whose surrogate gradient makes the count differentiable). AdamW (betas (0.9, 0.95)),
   gradient clipping, 5 % linear warmup then linear decay to 0, tau clamped to [-1, 1] after
   every step. Model weights are frozen.
2. **Discretise** (:func:`discretise`). Rank nodes by tau and bisect the number kept, k, for the
   smallest circuit whose loss on the held-out (validation) pairs meets the target. Bisection
   assumes loss falls as k grows, which holds closely along a learned ranking; the upper end is
   the learned mask's own open set if it meets the target, else every node, else (the whole
   model can miss a target a subset meets, since mean-ablating distractors helps) the first of
   2x, 4x, ... the open set that meets it.
3. **Refine** (:func:`refine`). The bisection keeps a prefix of one ranking; the paper's metric is
   edges, and a prefix often carries nodes the circuit does not need. Each kept node is tried
   out in turn, most edges first, and stays out if the loss still meets the target on both the
   validation pairs and the training pairs (two sets, so a drop that only suits 64 pairs is
   refused). Passes repeat until none drops a node, so every node left is needed: removing any
   one misses the target.
4. **Calibrate** (:func:`~sparse_lens.circuits.evaluate.calibrate`): a scalar scale and shift of
   the logit difference, 16 LBFGS steps; the loss is reported with and without it.

The search. The paper tunes hyperparameters with CARBS (hundreds of runs); a CPU gets a few.
:attr:`PruneConfig.search` lists (k_coef multiplier, lr multiplier) runs executed in order, each
warm-started from the previous run's taus, so an increasing k_coef keeps shrinking a circuit
that already works instead of starting over. Every run is discretised, and the smallest circuit
meeting the target (fewest edges, then fewest nodes) is refined. If even the full model misses the target there is no circuit: the
result says so (``target_met=False``) with the best loss seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sparse_lens.circuits.ablation import Ablation, MeanCache, make_ablation
from sparse_lens.circuits.circuit import Circuit, circuit_edges
from sparse_lens.circuits.evaluate import (
    answer_logits,
    binary_loss,
    calibrate,
    chunked_answer_logits,
    hooked_answer_logits,
    length_chunks,
    take_rows,
)
from sparse_lens.circuits.masks import NodeMasks, keep_hooks
from sparse_lens.circuits.registry import ablation_names
from sparse_lens.defaults import TARGET_LOSS
from sparse_lens.errors import SparseLensError
from sparse_lens.nodes import node_name, node_sites
from sparse_lens.schema import dataclass_from_dict
from sparse_lens.tasks.batch import TaskBatch
from sparse_lens.tasks.files import TasksDirs

EVAL_CHUNK = 64
"""Prompts per forward when scoring a fixed node set (:func:`hooked_answer_logits`'s default)."""

DEFAULT_SEARCH = ((1.0, 10.0), (10.0, 10.0), (100.0, 10.0), (300.0, 10.0), (1000.0, 10.0))
"""k_coef climbs 1000x over five warm-started runs: on the shipped model the third run still
had task loss far under the target (0.04 vs 0.15 for the quote task), so the circuit was still
shrinking; a run that overshoots cannot hurt, since the smallest circuit meeting the target wins."""


@dataclass
class PruneConfig:
    """Pruning hyperparameters. Defaults are the paper's centres (REFERENCE section 4) except
    ``steps`` and ``search``, which fit a CPU budget (one task in about two minutes on two cores
    for the shipped model). Losses are the tasks package's (mean binary CE per prompt)."""

    target_loss: float = TARGET_LOSS
    ablation: str = "mean"
    seed: int = 0
    steps: int = 60
    """Optimiser steps per search run. More steps find smaller circuits at proportional cost:
    on the shipped sparse model's quote task, 60 steps per run found 31 nodes / 43 edges in
    76 s on two cores, 200 steps 19 nodes / 26 edges in 203 s. The shipped circuits use 200
    (``scripts/ship_circuits.py``); the default keeps one task within two minutes."""
    batch_pairs: int = 64
    """Contrast pairs per step (64 pairs = 128 prompts, as in the paper)."""
    n_train_pairs: int = 256
    n_val_pairs: int = 64
    """Held-out (validation split) pairs the bisection and calibration use."""
    k_coef: float = 1e-4
    lr: float = 3e-3
    init_noise_bias: float = 0.1
    init_noise_scale: float = 1e-2
    weight_decay: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_frac: float = 0.05
    heaviside_temp: float = 1.0
    grad_clip: float = 1.0
    search: tuple[tuple[float, float], ...] = DEFAULT_SEARCH
    """Runs as (k_coef multiplier, lr multiplier), each warm-started from the previous one."""
    refine: bool = True
    """Greedy one-node removals after the bisection (step 3 of the module docstring)."""
    refine_max_trials: int = 2000
    """At most this many removal trials (one forward over the validation and training pairs
    each); a circuit of a few hundred nodes needs about two passes."""
    calibration_steps: int = 16
    chunk_size: int = 32
    """Prompts per forward chunk (length-sorted, to skip padding; the loss is the same)."""

    def __post_init__(self) -> None:
        self.search = tuple(tuple(float(x) for x in run) for run in self.search)
        if self.ablation not in ablation_names():
            raise SparseLensError(
                f"must be one of {ablation_names()}, got {self.ablation!r}", field="ablation"
            )
        for name in ("steps", "batch_pairs", "n_train_pairs", "n_val_pairs", "chunk_size"):
            if getattr(self, name) < 1:
                raise SparseLensError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("lr", "heaviside_temp", "grad_clip", "target_loss"):
            if not getattr(self, name) > 0:
                raise SparseLensError(f"must be positive, got {getattr(self, name)}", field=name)
        for name in (
            "k_coef",
            "init_noise_scale",
            "weight_decay",
            "calibration_steps",
            "refine_max_trials",
        ):
            if getattr(self, name) < 0:
                raise SparseLensError(f"must be >= 0, got {getattr(self, name)}", field=name)
        for name in ("beta1", "beta2", "warmup_frac"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SparseLensError(f"must be in [0, 1), got {getattr(self, name)}", field=name)
        if not isinstance(self.refine, bool):
            raise SparseLensError(f"must be true or false, got {self.refine!r}", field="refine")
        if not self.search or any(len(r) != 2 or min(r) <= 0 for r in self.search):
            raise SparseLensError(
                "must be a non-empty list of positive (k_coef, lr) multipliers", field="search"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["search"] = [list(run) for run in self.search]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> PruneConfig:
        """Build from a mapping (e.g. a circuit's ``settings``), refusing unknown keys."""
        return dataclass_from_dict(cls, data, source=source, noun="pruning setting")


@dataclass
class Discretised:
    """The outcome of :func:`discretise`: the kept nodes (a flat keep vector) and their loss."""

    keep: Bool[Tensor, " n_nodes"]
    n_nodes: int
    loss: float
    target_met: bool
    n_evaluations: int


@dataclass
class PruneResult:
    """What :func:`prune` found. ``circuit`` is None when no node set met the target."""

    circuit: Circuit | None
    target_met: bool
    best_loss: float
    full_loss: float
    runs: list[dict[str, Any]]
    tau: Float[Tensor, " n_nodes"] = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent optimising / discretising / calibrating (kept out of the circuit, so the
    same seed gives an identical circuit file)."""


# --------------------------------------------------------------------------------------------
# Batches


def sample_pairs(batch: TaskBatch, n_pairs: int, generator: torch.Generator) -> TaskBatch:
    """``n_pairs`` random whole pairs (both prompts) of ``batch``, without replacement."""
    pairs = torch.unique(batch.pair_index)
    if n_pairs >= len(pairs):
        return batch
    chosen = pairs[torch.randperm(len(pairs), generator=generator)[:n_pairs]]
    rows = torch.isin(batch.pair_index, chosen).nonzero().squeeze(-1)
    return take_rows(batch, rows)


def shuffle_pair_labels(batch: TaskBatch, seed: int = 0) -> TaskBatch:
    """A task with no signal: each pair's labels swapped (A <-> B) with probability 1/2.

    Every pair still has one A and one B prompt, so a constant guess stays at ln 2; only
    memorising which pairs were swapped can do better.
    """
    generator = torch.Generator().manual_seed(seed)
    n = int(batch.pair_index.max()) + 1
    swap = torch.rand(n, generator=generator) < 0.5
    flip = swap[batch.pair_index]
    return replace(batch, label=torch.where(flip, 1 - batch.label, batch.label))


# --------------------------------------------------------------------------------------------
# Steps 1-3


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Model weights need no gradient while masks train (saves a third of the backward)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _lr_factor(step: int, steps: int, warmup_frac: float) -> float:
    warmup = max(1, math.ceil(warmup_frac * steps))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def optimise_masks(
    model: nn.Module,
    masks: NodeMasks,
    train: TaskBatch,
    ablation,
    config: PruneConfig,
    *,
    k_coef: float,
    lr: float,
    generator: torch.Generator,
    progress: bool = True,
    desc: str = "prune",
) -> dict[str, float]:
    """Train ``masks`` for ``config.steps`` steps on random pair batches of ``train``.

    Gradients are switched on here, so a caller inside ``torch.no_grad()`` (or after
    ``torch.set_grad_enabled(False)``, common in analysis notebooks) can still prune."""
    with torch.enable_grad():
        return _optimise_masks(
            model,
            masks,
            train,
            ablation,
            config,
            k_coef=k_coef,
            lr=lr,
            generator=generator,
            progress=progress,
            desc=desc,
        )


def _optimise_masks(
    model: nn.Module,
    masks: NodeMasks,
    train: TaskBatch,
    ablation,
    config: PruneConfig,
    *,
    k_coef: float,
    lr: float,
    generator: torch.Generator,
    progress: bool,
    desc: str,
) -> dict[str, float]:
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(
        [masks.tau], lr=lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.steps, config.warmup_frac)
    )
    task = torch.tensor(float("nan"))
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    with model.hooks(fwd_hooks=masks.hooks(ablation)):
        for _ in bar:
            batch = sample_pairs(train, config.batch_pairs, generator)
            gates = masks.refresh()
            task = binary_loss(
                chunked_answer_logits(model, batch, config.chunk_size), batch.label
            ).mean()
            loss = task + k_coef * gates.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([masks.tau], config.grad_clip)
            optimizer.step()
            schedule.step()
            masks.clamp_()
            if progress:  # three host syncs per step: only when someone is watching
                bar.set_postfix(
                    loss=f"{loss.item():.4f}", task=f"{task.item():.4f}", open=masks.n_open()
                )
    bar.close()
    masks._gates = None
    return {"final_task_loss": task.item(), "open_after_training": masks.n_open()}


@torch.no_grad()
def discretise(
    model: nn.Module, masks: NodeMasks, val: TaskBatch, ablation, target_loss: float
) -> Discretised:
    """Rank nodes by tau and bisect the number kept for the smallest circuit meeting the target."""
    tau = masks.tau.detach()
    order = torch.sort(-tau, stable=True).indices
    losses: dict[int, float] = {}

    def keep_of(k: int) -> Tensor:
        keep = torch.zeros(masks.n_nodes, dtype=torch.bool)
        keep[order[:k]] = True
        return keep

    def loss_at(k: int, bound: float | None = None) -> float:
        if k not in losses:
            losses[k] = keep_loss(model, masks, keep_of(k), val, ablation, bound=bound)
        return losses[k]

    n_open = masks.n_open()
    lo = -1  # loss_at(lo) > target, by convention for lo = -1
    hi = next((k for k in (n_open, masks.n_nodes) if loss_at(k) <= target_loss), None)
    if hi is None:
        # Ablating distractors can beat the whole model, so a prefix of the ranking between the
        # open set and every node may meet a target neither end meets: try doubling sizes.
        lo, k = n_open, 2 * max(1, n_open)
        while k < masks.n_nodes:
            if loss_at(k) <= target_loss:
                hi = k
                break
            lo, k = k, 2 * k
    if hi is None:
        best_k = min(losses, key=lambda k: (losses[k], k))
        return Discretised(keep_of(best_k), best_k, losses[best_k], False, len(losses))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_at(mid, bound=target_loss) <= target_loss:  # only "above?" matters here
            hi = mid
        else:
            lo = mid
    return Discretised(keep_of(hi), hi, losses[hi], True, len(losses))


class BlockInputs:
    """The residual stream entering each block, per evaluation chunk of one batch, under a
    fixed node set, so that a trial changing only nodes of block L can start at block L.

    What enters block L depends only on the nodes of blocks before L. After the node set
    changes in block L, :meth:`stale_after` marks the inputs of later blocks stale; they are
    recomputed on next use. Only for ablations without per-forward state (mean, zero): a
    resample ablation draws once per whole forward, which a resumed forward would not repeat.
    """

    def __init__(self, model: nn.Module, batch: TaskBatch):
        self.model = model
        self.chunks = length_chunks(batch, EVAL_CHUNK)
        self.inputs: list[dict[int, Tensor]] = [{} for _ in self.chunks]
        self.fresh_below = 1  # inputs of blocks < fresh_below are current (block 0: embeddings)

    @staticmethod
    def applies(model: nn.Module, batch: TaskBatch, ablation, max_bytes: float = 2**28) -> bool:
        stateless = isinstance(ablation, Ablation) and (
            type(ablation).new_forward is Ablation.new_forward
        )
        size = batch.tokens.numel() * model.cfg.d_model * 4 * (model.cfg.n_layers - 1)
        return stateless and model.cfg.n_layers > 1 and size <= max_bytes

    def stale_after(self, layer: int) -> None:
        self.fresh_below = min(self.fresh_below, layer + 1)

    def entering(self, i: int, layer: int, hooks) -> Tensor:
        """Chunk ``i``'s stream entering block ``layer`` (``hooks``: the current node set's)."""
        if layer >= self.fresh_below:
            with torch.no_grad(), self.model.hooks(fwd_hooks=list(hooks)):
                for j, (_, chunk) in enumerate(self.chunks):
                    tokens = chunk.tokens.to(self.model.W_E.device)
                    resid = self.inputs[j].get(self.fresh_below - 1)
                    for block in range(self.fresh_below, self.model.cfg.n_layers):
                        if block == 1:
                            resid = self.model(tokens, stop_at_layer=1)
                        else:
                            resid = self.model(
                                resid, start_at_layer=block - 1, stop_at_layer=block, tokens=tokens
                            )
                        self.inputs[j][block] = resid
            self.fresh_below = self.model.cfg.n_layers
        return self.inputs[i][layer]


def keep_loss(
    model: nn.Module,
    masks: NodeMasks,
    keep: Tensor,
    batch: TaskBatch,
    ablation,
    bound: float | None = None,
    resume: tuple[BlockInputs, int, Any] | None = None,
) -> float:
    """Task loss on ``batch`` with only the ``keep`` nodes live (the rest ablated).

    With ``bound``, the prompts are evaluated a chunk at a time and ``inf`` is returned as soon
    as the loss is certain to exceed ``bound`` (per-prompt losses are non-negative, so the sum so
    far only grows): a search that only asks "above the target?" skips the rest of the forwards.
    A loss at or under the bound is the same number as without it (the same chunks run).

    ``resume`` = (the batch's :class:`BlockInputs`, layer L, the hooks of the node set those
    inputs were taken under) for a ``keep`` that differs from that set only in blocks >= L:
    the forwards start at block L, with the same result."""
    hooks = keep_hooks(model, masks.keep_dict(keep), ablation)
    if bound is None and resume is None:
        return float(binary_loss(hooked_answer_logits(model, batch, hooks), batch.label).mean())
    # a margin far above float rounding of the running sum, so "certain" is certain
    limit = math.inf if bound is None else bound * len(batch) * (1 + 1e-5) + 1e-6
    chunks = length_chunks(batch, EVAL_CHUNK) if resume is None else resume[0].chunks
    rows, parts, total = [], [], 0.0
    for i, (chunk_rows, chunk) in enumerate(chunks):
        if resume is None or resume[1] == 0:
            logits = hooked_answer_logits(model, chunk, hooks)
        else:
            inputs, layer, base_hooks = resume
            start = (layer, inputs.entering(i, layer, base_hooks))
            with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
                logits = answer_logits(model, chunk, start).float().cpu()
        total += float(binary_loss(logits, chunk.label).sum())
        if total > limit:
            return math.inf
        rows.append(chunk_rows)
        parts.append(logits)
    logits = torch.cat(parts)[torch.argsort(torch.cat(rows))]
    return float(binary_loss(logits, batch.label).mean())


def _block_of_nodes(masks: NodeMasks) -> list[int]:
    """The block (layer) index of every flat node, from its site's hook name."""
    out: list[int] = []
    for i, site in enumerate(masks.sites):
        parts = site.hook.split(".")
        layer = int(parts[1]) if parts[0] == "blocks" else 0
        out += [layer] * (masks.offsets[i + 1] - masks.offsets[i])
    return out


def node_degrees(model: nn.Module, masks: NodeMasks, keep: Tensor) -> dict[int, int]:
    """Edges touching each kept node (flat index), counted as :attr:`Circuit.edges` counts them."""
    flat = keep.nonzero().squeeze(-1).tolist()
    nodes = masks.nodes(flat)
    by_name = {node_name(h, i): f for f, (h, i) in zip(flat, nodes, strict=True)}
    degree = dict.fromkeys(flat, 0)
    for edge in circuit_edges(model, nodes):
        degree[by_name[edge.src]] += 1
        degree[by_name[edge.dst]] += 1
    return degree


def edge_count(model: nn.Module, masks: NodeMasks, keep: Tensor) -> int:
    """Edges among the ``keep`` nodes (:func:`~sparse_lens.circuits.circuit.circuit_edges`)."""
    return len(circuit_edges(model, masks.nodes(keep.nonzero().squeeze(-1).tolist())))


@dataclass
class Refined:
    """The outcome of :func:`refine`."""

    keep: Bool[Tensor, " n_nodes"]
    loss: float
    """Loss on the validation pairs."""
    n_trials: int
    converged: bool
    """True when the last pass dropped nothing: every node left is needed."""


@torch.no_grad()
def refine(
    model: nn.Module,
    masks: NodeMasks,
    keep: Bool[Tensor, " n_nodes"],
    tau: Float[Tensor, " n_nodes"],
    val: TaskBatch,
    train: TaskBatch,
    ablation,
    target_loss: float,
    max_trials: int,
) -> Refined:
    """Greedily drop kept nodes while both ``val`` and ``train`` still meet the target.

    Each pass tries the kept nodes once, most edges first (ties: lowest tau first, i.e. the
    node the masks trusted least), re-counting edges between passes; it stops after a pass
    that drops nothing or after ``max_trials`` trials."""
    keep = keep.clone()
    loss = keep_loss(model, masks, keep, val, ablation)
    trials, converged = 0, False
    inputs = {
        name: BlockInputs(model, batch)
        for name, batch in (("val", val), ("train", train))
        if BlockInputs.applies(model, batch, ablation)
    }
    layer_of = _block_of_nodes(masks)

    def trial_loss(name: str, batch: TaskBatch, f: int) -> float:
        resume = None
        if name in inputs:
            keep[f] = True
            base_hooks = keep_hooks(model, masks.keep_dict(keep), ablation)
            keep[f] = False
            resume = (inputs[name], layer_of[f], base_hooks)
        return keep_loss(model, masks, keep, batch, ablation, bound=target_loss, resume=resume)

    while trials < max_trials and not converged:
        degree = node_degrees(model, masks, keep)
        order = sorted(degree, key=lambda f: (-degree[f], float(tau[f]), f))
        converged = True
        for f in order:
            if trials >= max_trials:
                converged = False
                break
            trials += 1
            keep[f] = False
            trial = trial_loss("val", val, f)
            if trial <= target_loss and trial_loss("train", train, f) <= target_loss:
                loss, converged = trial, False
                for cached in inputs.values():
                    cached.stale_after(layer_of[f])
            else:
                keep[f] = True
        if not keep.any():
            break
    return Refined(keep, loss, trials, converged)


# --------------------------------------------------------------------------------------------
# The whole search


def prune(
    model: nn.Module,
    train: TaskBatch,
    val: TaskBatch,
    *,
    config: PruneConfig | None = None,
    cache: MeanCache | None = None,
    task: str | None = None,
    split: str = "validation",
    model_id: str = "",
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` on ``train`` pairs to the smallest circuit meeting the target on ``val``.

    ``cache`` supplies mean / resample values (not needed for zero ablation). Returns a
    :class:`PruneResult`; its circuit's ``achieved_loss`` is measured on ``val`` (``split``).
    """
    config = config or PruneConfig()
    if cache is not None:
        cache.check_model(model)
    ablation = make_ablation(config.ablation, cache, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    masks = NodeMasks(
        node_sites(model.cfg),
        config.init_noise_bias,
        config.init_noise_scale,
        generator=generator,
        temperature=config.heaviside_temp,
    )
    runs: list[dict[str, Any]] = []
    timings = {"optimise": 0.0, "discretise": 0.0, "optimiser_steps": 0.0}
    best: tuple[Discretised, Tensor] | None = None
    best_size: tuple = ()
    best_run: dict[str, Any] = {}
    closest: tuple[Discretised, Tensor] | None = None
    with frozen(model):
        full_loss = float(binary_loss(hooked_answer_logits(model, val), val.label).mean())
        for i, (k_mult, lr_mult) in enumerate(config.search):
            k_coef, lr = config.k_coef * k_mult, config.lr * lr_mult
            start = time.perf_counter()
            stats = optimise_masks(
                model,
                masks,
                train,
                ablation,
                config,
                k_coef=k_coef,
                lr=lr,
                generator=generator,
                progress=progress,
                desc=f"prune {i + 1}/{len(config.search)} k_coef={k_coef:.0e} lr={lr:.0e}",
            )
            timings["optimise"] += time.perf_counter() - start
            timings["optimiser_steps"] += config.steps
            start = time.perf_counter()
            found = discretise(model, masks, val, ablation, config.target_loss)
            timings["discretise"] += time.perf_counter() - start
            n_edges = edge_count(model, masks, found.keep) if found.target_met else None
            runs.append(
                {
                    "k_coef": k_coef,
                    "lr": lr,
                    "steps": config.steps,
                    **stats,
                    "n_nodes": found.n_nodes,
                    "n_edges": n_edges,
                    "loss": found.loss,
                    "target_met": found.target_met,
                }
            )
            if progress:
                met = "meets" if found.target_met else "misses"
                print(
                    f"  run {i + 1}: {stats['open_after_training']} open after training, "
                    f"{found.n_nodes} nodes at loss {found.loss:.4f} ({met} target {config.target_loss})"
                )
            snapshot = (found, masks.tau.detach().clone())
            size = (n_edges, found.n_nodes, found.loss)
            if found.target_met and (best is None or size < best_size):
                best, best_size, best_run = snapshot, size, runs[-1]
            if closest is None or found.loss < closest[0].loss:
                closest = snapshot
        if best is None:
            return PruneResult(
                None, False, min(closest[0].loss, full_loss), full_loss, runs, closest[1], timings
            )
        found, tau = best
        kept, loss = found.keep, found.loss
        if config.refine:
            start = time.perf_counter()
            refined = refine(
                model,
                masks,
                kept,
                tau,
                val,
                train,
                ablation,
                config.target_loss,
                config.refine_max_trials,
            )
            timings["refine"] = time.perf_counter() - start
            kept, loss = refined.keep, refined.loss
            best_run["refined"] = {
                "n_nodes": int(kept.sum()),
                "n_edges": edge_count(model, masks, kept),
                "loss": loss,
                "trials": refined.n_trials,
                "converged": refined.converged,
            }
            if progress:
                r = best_run["refined"]
                print(
                    f"  refined: {found.n_nodes} -> {r['n_nodes']} nodes, {best_size[0]} -> "
                    f"{r['n_edges']} edges at loss {loss:.4f} ({r['trials']} trials)"
                )
        keep = masks.keep_dict(kept)
        logits = hooked_answer_logits(model, val, keep_hooks(model, keep, ablation))
        scale, shift, calibrated = calibrate(logits, val.label, config.calibration_steps)
    nodes = [
        (hook, int(i)) for hook, mask in keep.items() for i in mask.nonzero().squeeze(-1).tolist()
    ]
    circuit = Circuit.build(
        model,
        nodes,
        task=task or train.task,
        split=split,
        target_loss=config.target_loss,
        achieved_loss=loss,
        calibrated_loss=calibrated,
        logit_scale=scale,
        logit_shift=shift,
        ablation=config.ablation,
        seed=config.seed,
        model_id=model_id,
        settings=config.to_dict(),
        search=runs,
    )
    return PruneResult(circuit, True, loss, full_loss, runs, tau, timings)


def task_pairs(
    model: nn.Module,
    task,
    n_pairs: int,
    *,
    seed: int,
    split: str,
    tasks_dir: TasksDirs = None,
    tokenizer=None,
) -> TaskBatch:
    """``n_pairs`` pairs of a named (or loaded) task from ``split``, tokenised for ``model``."""
    from sparse_lens.tasks import generate_pairs, get_task, make_batch

    spec = get_task(task, tasks_dir=tasks_dir) if isinstance(task, str) else task
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise SparseLensError(
            "the model has no tokenizer, so task prompts cannot be built", field="tokenizer"
        )
    batch = make_batch(
        generate_pairs(spec, n_pairs, seed=seed, split=split, tokenizer=tok), n_ctx=model.cfg.n_ctx
    )
    model.check_tokens(batch.tokens)
    model.check_tokens(batch.answer_ids)
    return batch


def task_batches(
    model: nn.Module,
    task,
    config: PruneConfig,
    *,
    tasks_dir: TasksDirs = None,
    tokenizer=None,
    split: str = "validation",
) -> tuple[TaskBatch, TaskBatch]:
    """Train-split pairs (to learn masks) and ``split`` pairs (to bisect and calibrate)."""
    kw = dict(seed=config.seed, tasks_dir=tasks_dir, tokenizer=tokenizer)
    return (
        task_pairs(model, task, config.n_train_pairs, split="train", **kw),
        task_pairs(model, task, config.n_val_pairs, split=split, **kw),
    )


def prune_task(
    model: nn.Module,
    task,
    *,
    config: PruneConfig | None = None,
    cache: MeanCache | None = None,
    tasks_dir: TasksDirs = None,
    tokenizer=None,
    model_id: str = "",
    progress: bool = True,
) -> PruneResult:
    """:func:`prune` on a task from the tasks package (train split to learn, validation to bisect)."""
    config = config or PruneConfig()
    train, val = task_batches(model, task, config, tasks_dir=tasks_dir, tokenizer=tokenizer)
    return prune(
        model,
        train,
        val,
        config=config,
        cache=cache,
        task=train.task,
        model_id=model_id,
        progress=progress,
    )
