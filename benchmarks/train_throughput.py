"""Training throughput: dense vs weight-sparse steps of one architecture, and the projection's share.

    python benchmarks/train_throughput.py [--preset cpu] [--set key=value ...]
                                          [--rounds 4] [--steps 5] [--threads N]

Builds the preset's model twice (same init) and times real trainer steps (forward, backward,
grad-RMS normalisation, Adam, projection, weight decay) on random tokens of the model's
vocabulary, which cost exactly what real tokens do. The sparse trainer is placed past the end of
annealing, so it projects at the target L0 every step (its most expensive regime: the most
entries to zero). Dense and sparse steps are measured in alternating rounds within one process
and summarised by medians, so a noisy shared CPU biases neither side. Prints tokens/s for each,
the sparse / dense step-time ratio (target <= 1.15) and the share of the sparse step spent in
the projection. Never used for timed asserts in tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch


def build_trainer(run, dense: bool, tokens: np.ndarray, out_dir: str):
    from sparse_lens.model import SparseTransformer
    from sparse_lens.train.config import TrainConfig
    from sparse_lens.train.data import TrainData
    from sparse_lens.train.trainer import Trainer

    train = TrainConfig.from_dict(
        {**run.train.to_dict(), "l0_target": 1.0 if dense else run.train.l0_target}
    )
    cfg = run.model_config(run.train.vocab_size)
    model = SparseTransformer(cfg, seed=0)
    data = TrainData(tokens, tokens, tokenizer=None, manifest_hash="bench", tokenizer_hash="bench")
    trainer = Trainer(model, train, data, out_dir, progress=False)
    # Past the end of annealing: the sparse model projects at its target L0 from here on.
    trainer.step = int(train.anneal_end * train.steps) + 1
    return trainer


def time_steps(trainer, n: int) -> tuple[float, float]:
    """Median seconds per step and mean projection seconds per step over ``n`` steps."""
    per_step, projection = [], []
    for _ in range(n):
        before = dict(trainer.timers)
        started = time.perf_counter()
        trainer._train_step()
        per_step.append(time.perf_counter() - started)
        projection.append(trainer.timers["projection"] - before["projection"])
    return statistics.median(per_step), statistics.fmean(projection)


def main(argv: list[str] | None = None) -> None:
    from sparse_lens.train.config import apply_overrides, load_preset
    from sparse_lens.train.sparsifier import sparsity_report

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: the preset's")
    args = parser.parse_args(argv)

    run = apply_overrides(load_preset(args.preset), args.overrides)
    threads = args.threads or run.train.threads
    if threads:
        torch.set_num_threads(threads)
    cfg = run.model_config(run.train.vocab_size)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab - 1, size=2_000_000, dtype=np.uint16)
    tokens_per_step = run.train.batch_size * cfg.n_ctx

    with tempfile.TemporaryDirectory() as tmp:
        dense = build_trainer(run, True, tokens, f"{tmp}/dense")
        sparse = build_trainer(run, False, tokens, f"{tmp}/sparse")
        n_params = sum(p.numel() for p in dense.model.parameters())
        print(
            f"preset {args.preset}: n_layers {cfg.n_layers}, d_model {cfg.d_model}, n_ctx "
            f"{cfg.n_ctx}, d_vocab {cfg.d_vocab}, batch {run.train.batch_size} "
            f"({tokens_per_step:,} tokens/step), {n_params / 1e6:.2f}M params, "
            f"L0 {run.train.l0_target:g}, threads {torch.get_num_threads()}"
        )
        for trainer in (dense, sparse):
            time_steps(trainer, args.warmup)
        dense_times, sparse_times, projections = [], [], []
        for _ in range(args.rounds):
            d, _ = time_steps(dense, args.steps)
            s, p = time_steps(sparse, args.steps)
            dense_times.append(d)
            sparse_times.append(s)
            projections.append(p)
        d, s, p = (statistics.median(x) for x in (dense_times, sparse_times, projections))
        nonzero = sparsity_report(sparse.targets)

    print(f"dense : {d * 1e3:8.1f} ms/step  {tokens_per_step / d:10,.0f} tokens/s")
    print(f"sparse: {s * 1e3:8.1f} ms/step  {tokens_per_step / s:10,.0f} tokens/s")
    print(f"projection: {p * 1e3:.1f} ms/step = {p / s:.1%} of the sparse step")
    print(f"sparse / dense step time: {s / d:.3f} (target <= 1.15)")
    print(
        "nonzero fraction after projection: "
        + ", ".join(f"{k} {v:.4f}" for k, v in nonzero.items())
    )
    print(
        f"projected wall time for {run.train.steps} steps: {run.train.steps * s / 3600:.2f} h "
        f"sparse, {run.train.steps * d / 3600:.2f} h dense (without evals / checkpoints)"
    )


if __name__ == "__main__":
    main()
