"""Controls that can fail: structure-matched random node sets and nonsense tasks.

A control shows something only if a real circuit could lose to it. Two kinds:

- **Structure-matched random sets** (:func:`structure_matched_sets`). A uniformly random node
  set of a circuit's size is mostly dead channels, so keeping it alone scores like the empty
  circuit and no circuit can fail to beat it. These sets copy the circuit's structure instead:
  the same number of nodes at every hook (so the same layers and node types), the same number
  of attention heads per layer with the same number of q/k/v channels in each head, and every
  node drawn from the best-connected nodes of its site (most nonzero weights), the nodes a
  circuit would plausibly use. A circuit should beat their 5th percentile.
- **Nonsense tasks** (:func:`random_token_batch`, and
  :func:`~sparse_lens.circuits.pruning.shuffle_pair_labels`): the same prompts' answers with
  random labels, or prompts of random tokens. Pruning with the real task's budget on them
  measures what reaching a target costs with no mechanism to find.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from jaxtyping import Int
from torch import Tensor

from sparse_lens.config import SparseConfig
from sparse_lens.nodes import node_sites
from sparse_lens.tasks.batch import TaskBatch

DEFAULT_POOL_FACTOR = 4
"""Nodes are drawn from the ``factor * count`` best-connected nodes of their site (heads: the
``factor * heads used`` best-connected heads of the layer)."""

Node = tuple[str, int]
QKV = ("q", "k", "v")


def _top(scores: Tensor, n: int) -> list[int]:
    """Indices of the ``n`` largest scores (ties by lower index), as a sorted pool."""
    n = min(n, scores.numel())
    order = torch.sort(-scores.double(), stable=True).indices[:n]
    return sorted(order.tolist())


def _pick(pool: list[int], count: int, generator: torch.Generator) -> list[int]:
    chosen = torch.randperm(len(pool), generator=generator)[:count]
    return sorted(pool[i] for i in chosen.tolist())


def structure_matched_sets(
    cfg: SparseConfig,
    nodes: list[Node],
    degree: dict[str, Tensor],
    n_sets: int,
    *,
    seed: int = 0,
    pool_factor: int = DEFAULT_POOL_FACTOR,
) -> list[list[Node]]:
    """``n_sets`` random node sets with the structure of ``nodes`` (module docstring).

    ``degree`` maps every node site's hook to a [width] tensor of connectivity scores (e.g.
    the number of nonzero weights touching each channel); nodes are drawn from the best-scored.
    """
    sites = {site.hook: site for site in node_sites(cfg)}
    per_hook: dict[str, list[int]] = {}
    for hook, index in nodes:
        per_hook.setdefault(hook, []).append(int(index))
    # q/k/v nodes per (layer, head) and type: the head structure to copy
    heads_used: dict[int, dict[int, dict[str, int]]] = {}
    for hook, indices in per_hook.items():
        site = sites[hook]
        if site.type in QKV:
            for index in indices:
                head = index // cfg.d_head
                by_type = heads_used.setdefault(site.layer, {}).setdefault(head, {})
                by_type[site.type] = by_type.get(site.type, 0) + 1
    qkv_hooks = {(site.layer, site.type): site.hook for site in sites.values() if site.type in QKV}
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        chosen: list[Node] = []
        for hook, indices in per_hook.items():
            if sites[hook].type in QKV:
                continue
            pool = _top(degree[hook], pool_factor * len(indices))
            chosen += [(hook, i) for i in _pick(pool, len(indices), generator)]
        for layer, used in heads_used.items():
            head_score = sum(
                degree[qkv_hooks[(layer, kind)]].view(cfg.n_heads, cfg.d_head).sum(-1)
                for kind in QKV
            )
            heads = _pick(_top(head_score, pool_factor * len(used)), len(used), generator)
            shuffled = torch.randperm(len(heads), generator=generator).tolist()
            for (_, by_type), target in zip(sorted(used.items()), shuffled, strict=True):
                head = heads[target]
                for kind, count in by_type.items():
                    hook = qkv_hooks[(layer, kind)]
                    channels = degree[hook].view(cfg.n_heads, cfg.d_head)[head]
                    pool = _top(channels, pool_factor * count)
                    chosen += [(hook, head * cfg.d_head + c) for c in _pick(pool, count, generator)]
        sets.append(chosen)
    return sets


def random_token_batch(
    batch: TaskBatch, d_vocab: int, seed: int = 0, avoid: Int[Tensor, " k"] | None = None
) -> TaskBatch:
    """``batch`` with every real prompt token replaced by a random token (same lengths, same
    answers and labels): a task whose prompts carry no information about the answer.

    ``avoid`` (e.g. the special tokens) is never drawn. Padding beyond ``last_pos`` is kept."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.ones(d_vocab, dtype=torch.bool)
    if avoid is not None:
        allowed[avoid] = False
    vocab = allowed.nonzero().squeeze(-1)
    draws = vocab[torch.randint(len(vocab), batch.tokens.shape, generator=generator)]
    tokens = torch.where(batch.mask, draws, batch.tokens)
    return replace(
        batch,
        tokens=tokens,
        prompts=[f"<random tokens {i}>" for i in range(len(batch.prompts))],
        task=f"{batch.task} (random tokens)",
    )
