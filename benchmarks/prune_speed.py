"""How long does pruning one task take? Wall time and optimiser steps per second.

    python benchmarks/prune_speed.py [MODEL_DIR] [--task single_double_quote] [--steps N]
                                     [--threads 2] [--batch-pairs 64]

MODEL_DIR defaults to the shipped ``stdlib-sparse`` model when it exists. Without it, the
benchmark builds a RANDOM model with the cpu preset's architecture (same node sites and cost
per step as the model the project ships) and the default stdlib tokenizer, and says so: the
timing is representative, the circuit is not. The target for the shipped model: one task in at
most two minutes on two cores, mean cache excluded (it is computed once per model and reused
by every task; its time is printed separately).

The budget sets :class:`~sparse_lens.circuits.PruneConfig`'s defaults: a step on 64 pairs (128
prompts) costs one forward and backward of the blocks at the prompts' length; the search runs
``len(search) * steps`` of them, then about log2(n_nodes) bisection forwards on the validation
pairs per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CODE_ROOT = Path(os.environ.get("PRUNE_SPEED_CODE", ROOT))
"""Whose sparse_lens is timed: this checkout's, or (--baseline-ref) an exported ref's."""
sys.path.insert(0, str(CODE_ROOT))


def _random_cpu_model():
    from sparse_lens.data import default_tokenizer
    from sparse_lens.model import SparseTransformer
    from sparse_lens.train.config import load_preset

    tokenizer = default_tokenizer()
    run = load_preset("cpu")
    model = SparseTransformer(
        run.model_config(tokenizer.get_vocab_size()), tokenizer=tokenizer, seed=0
    )
    with torch.no_grad():  # 1/16 weight density, like the preset's L0 target
        for name, param in model.named_parameters():
            if param.ndim >= 2 and "bigram" not in name:
                k = max(1, param.numel() // 16)
                threshold = param.abs().flatten().kthvalue(param.numel() - k + 1).values
                param.mul_(param.abs() >= threshold)
    return model.eval()


def _compare_with(ref: str, argv: list[str]) -> int:
    """Run this benchmark script on ``ref``'s package (exported with ``git archive``; the
    repository is only read), then on this checkout's, one after the other, and print the
    wall-time ratio. The node-set digests say whether both found the same circuit."""
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for label, root in ((f"before ({ref})", Path(tmp)), ("after (this checkout)", ROOT)):
            print(f"==== {label}", flush=True)
            env = {**os.environ, "PYTHONPATH": str(root), "PRUNE_SPEED_CODE": str(root)}
            out = subprocess.run(
                [sys.executable, __file__, *argv], env=env, capture_output=True, text=True
            )
            text = out.stdout + (out.stderr if out.returncode else "")
            print(text, end="", flush=True)
            match = re.search(r"prune: ([0-9.]+)s wall", text)
            walls[label] = float(match.group(1)) if match else None
    before, after = walls.values()
    if before and after:
        print(f"speed-up: {before:.1f}s -> {after:.1f}s wall, {before / after:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", help="model directory (default: shipped stdlib-sparse)")
    parser.add_argument("--task", default="single_double_quote")
    parser.add_argument("--steps", type=int, help="steps per search run (default: PruneConfig's)")
    parser.add_argument("--batch-pairs", type=int, help="pairs per step (default: PruneConfig's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-loss", type=float, default=0.15)
    parser.add_argument(
        "--baseline-ref",
        help="also time this git ref's code (e.g. main) first, in a subprocess, and print both",
    )
    args = parser.parse_args(argv)
    if args.baseline_ref:
        rest = list(sys.argv[1:] if argv is None else argv)
        at = next(i for i, a in enumerate(rest) if a.startswith("--baseline-ref"))
        del rest[at : at + (1 if "=" in rest[at] else 2)]
        return _compare_with(args.baseline_ref, rest)
    torch.set_num_threads(args.threads)

    from dataclasses import replace

    from sparse_lens.circuits import (
        PruneConfig,
        compute_mean_cache,
        mean_cache_for,
        prune,
        task_batches,
    )
    from sparse_lens.circuits.evaluate import hooked_loss
    from sparse_lens.model import SparseTransformer
    from sparse_lens.nodes import node_sites
    from sparse_lens.pretrained import PRETRAINED_DIR

    model_dir = Path(args.model) if args.model else PRETRAINED_DIR / "stdlib-sparse"
    random_model = not (model_dir / "config.json").is_file()
    if random_model and args.model:
        parser.error(f"{model_dir} is not a model directory")
    start = time.perf_counter()
    if random_model:
        print(
            "stdlib-sparse is not shipped yet: timing a RANDOM model with the cpu preset's architecture"
        )
        model = _random_cpu_model()
    else:
        model = SparseTransformer.from_pretrained(model_dir)
    print(
        f"model: {model_dir if not random_model else 'random cpu preset'} (load {time.perf_counter() - start:.1f}s)"
    )
    cfg = model.cfg
    n_nodes = sum(s.width for s in node_sites(cfg))
    print(
        f"  n_layers {cfg.n_layers}, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, n_ctx {cfg.n_ctx}, "
        f"{n_nodes} nodes; {torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    if random_model:
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.d_vocab, (256, cfg.n_ctx), generator=generator)
        cache = compute_mean_cache(model, tokens)
    else:
        cache = mean_cache_for(model, model_dir)
    print(
        f"mean cache: {cache.n_tokens} tokens, {time.perf_counter() - start:.1f}s (once per model)"
    )

    config = PruneConfig(target_loss=args.target_loss)
    if args.steps:
        config = replace(config, steps=args.steps)
    if args.batch_pairs:
        config = replace(config, batch_pairs=args.batch_pairs)
    start = time.perf_counter()
    train, val = task_batches(model, args.task, config)
    setup = time.perf_counter() - start
    if (
        random_model
    ):  # a random model misses 0.15; aim just above its loss so bisection runs in full
        config = replace(config, target_loss=1.05 * hooked_loss(model, val))
    mean_len = float((train.last_pos + 1).float().mean())
    print(
        f"task {args.task}: {len(train) // 2} train / {len(val) // 2} validation pairs, mean prompt "
        f"{mean_len:.0f} tokens (generated in {setup:.1f}s)"
    )

    start = time.perf_counter()
    result = prune(model, train, val, config=config, cache=cache, task=args.task, progress=False)
    wall = time.perf_counter() - start
    t = result.timings
    steps = int(t["optimiser_steps"])
    print(
        f"prune: {wall:.1f}s wall for {len(config.search)} runs x {config.steps} steps of "
        f"{config.batch_pairs} pairs: {steps / t['optimise']:.2f} steps/s "
        f"({t['optimise']:.1f}s optimising, {t['discretise']:.1f}s bisecting, "
        f"{t.get('refine', 0.0):.1f}s refining)"
    )
    found = result.circuit
    what = "target missed"
    if found:
        digest = hashlib.sha256(json.dumps(sorted(n.name for n in found.nodes)).encode()).hexdigest()[:12]
        what = f"circuit of {found.n_nodes} nodes, {found.n_edges} edges (node set {digest})"
    print(
        f"result: {what} "
        f"at loss {result.best_loss:.4f} (target {config.target_loss:.4f}, full {result.full_loss:.4f})"
    )
    budget = 120.0
    print(f"budget: {wall:.1f}s of {budget:.0f}s ({'within' if wall <= budget else 'OVER'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
