"""Training throughput: dense vs weight-sparse steps, against a baseline checkout and the FLOP bound.

    python benchmarks/train_throughput.py [--preset cpu] [--set key=value ...]
                                          [--rounds 4] [--steps 5] [--threads N]
                                          [--baseline PATH]

Builds the preset's model twice (same init) and times real trainer steps (forward, backward,
grad-RMS normalisation, Adam, projection, weight decay) on random tokens of the model's
vocabulary, which cost exactly what real tokens do. The sparse trainer is placed past the end of
annealing, so it projects at the target L0 every step (its most expensive regime: the most
entries to zero).

Each checkout (this one, and ``--baseline PATH``, e.g. ``git worktree add --detach
/tmp/sl-baseline main``) runs in its own worker process importing its own ``sparse_lens``;
the workers take turns, one round at a time (dense steps, then sparse steps, then a dense
matmul for the FLOP bound), so a noisy shared CPU biases no side. Results are medians over
rounds. Printed: tokens/s for dense and sparse, the sparse / dense step-time ratio (target <=
1.15), the projection's share of the sparse step, the speedup over the baseline, and the
fraction of the FLOP bound: model FLOPs per step (3x the forward's matmul FLOPs, causal
attention counted as n_ctx / 2 keys per query) over the step time, divided by the rate of a
1024^3 float32 matmul measured in the same rounds. Never used for timed asserts in tests.

Measured against main c5514e4 (same model / train code as 9727f71), 2-core Xeon VM with a
training job on the other core, torch 2.13 CPU, 1 thread; tokens/s (this vs baseline):

    --rounds 5 --steps 3 --baseline /tmp/sl-baseline               (cpu preset)
      sparse 7,829 vs 5,701 (1.37x), dense 8,219 vs 5,849 (1.41x); sparse / dense 1.050;
      dense at 23.1% of the FLOP bound (152 GFLOP/s matmul, 17.7 GFLOP/step)
    --rounds 5 --steps 2 --set n_layers=4 --set d_model=256 --baseline /tmp/sl-baseline
      sparse 2,513 vs 1,635 (1.54x), dense 2,610 vs 1,551 (1.68x); sparse / dense 1.039;
      dense at 29.1% of the FLOP bound (156 GFLOP/s matmul, 70.9 GFLOP/step)

What is left at 4L/d256 (torch.profiler, sparse step): AbsTopK ~1/3 (torch.topk alone ~22%),
matmuls ~27%, fused attention (forward + backward) ~18%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- worker side
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


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
    """Median float32 FLOP/s of an n^3 matmul: the attainable bound at this thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times)


def step_flops(cfg, batch: int) -> float:
    """Matmul FLOPs of one training step of the dense model (forward + 2x for backward)."""
    d_attn = cfg.n_heads * cfg.d_head
    per_token = cfg.n_layers * (
        cfg.d_in * 3 * d_attn
        + d_attn * cfg.d_model
        + cfg.d_in * cfg.d_mlp
        + cfg.d_mlp * cfg.d_model
    )
    per_token += cfg.d_model * cfg.d_vocab
    matmul = 2 * per_token * batch * cfg.n_ctx
    # QK^T and pattern @ V: 2 FLOPs per multiply-add, (n_ctx + 1) / 2 keys per query on average.
    attention = cfg.n_layers * 2 * 2 * d_attn * batch * cfg.n_ctx * (cfg.n_ctx + 1) / 2
    return 3 * (matmul + attention)


def worker(args) -> None:
    """Build both trainers, then answer one JSON line per round read from stdin."""
    import sparse_lens
    from sparse_lens.train.config import apply_overrides, load_preset
    from sparse_lens.train.sparsifier import sparsity_report

    run = apply_overrides(load_preset(args.preset), args.overrides)
    threads = args.threads or run.train.threads
    if threads:
        torch.set_num_threads(threads)
    cfg = run.model_config(run.train.vocab_size)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.d_vocab - 1, size=2_000_000, dtype=np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        dense = build_trainer(run, True, tokens, f"{tmp}/dense")
        sparse = build_trainer(run, False, tokens, f"{tmp}/sparse")
        for trainer in (dense, sparse):
            time_steps(trainer, args.warmup)
        header = {
            "package": sparse_lens.__file__,
            "shape": (
                f"preset {args.preset} {' '.join(args.overrides)}: n_layers {cfg.n_layers}, "
                f"d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, n_heads {cfg.n_heads}, n_ctx "
                f"{cfg.n_ctx}, d_vocab {cfg.d_vocab}, batch {run.train.batch_size} "
                f"({run.train.batch_size * cfg.n_ctx:,} tokens/step), "
                f"{sum(p.numel() for p in dense.model.parameters()) / 1e6:.2f}M params, "
                f"L0 {run.train.l0_target:g}, threads {torch.get_num_threads()}"
            ),
            "tokens_per_step": run.train.batch_size * cfg.n_ctx,
            "step_flops": step_flops(cfg, run.train.batch_size),
            "nonzero": sparsity_report(sparse.targets),
            "train_steps": run.train.steps,
        }
        print(json.dumps(header), flush=True)
        for line in sys.stdin:
            if not line.strip():
                break
            d, _ = time_steps(dense, args.steps)
            s, p = time_steps(sparse, args.steps)
            result = {"dense": d, "sparse": s, "projection": p, "matmul": matmul_flops_per_s()}
            print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- driver side
class Worker:
    def __init__(self, checkout: Path, argv: list[str]):
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", *argv],
            cwd=checkout,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.header = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with {self.process.wait()}")
        return json.loads(line)

    def round(self) -> dict:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def summarise(name: str, header: dict, rounds: list[dict]) -> dict[str, float]:
    """Print one checkout's medians; the FLOP-bound fraction is the median of per-round ones
    (each round's steps over the matmul rate measured right after them, under the same load)."""
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    tokens, flops = header["tokens_per_step"], header["step_flops"]
    d, s, p, peak = med["dense"], med["sparse"], med["projection"], med["matmul"]

    def bound(mode: str) -> float:
        return statistics.median(flops / r[mode] / r["matmul"] for r in rounds)

    print(f"[{name}] {header['package']}")
    print(
        f"  dense : {d * 1e3:8.1f} ms/step  {tokens / d:10,.0f} tokens/s  "
        f"{bound('dense'):6.1%} of the FLOP bound"
    )
    print(
        f"  sparse: {s * 1e3:8.1f} ms/step  {tokens / s:10,.0f} tokens/s  "
        f"{bound('sparse'):6.1%} of the FLOP bound"
    )
    print(f"  projection: {p * 1e3:.1f} ms/step = {p / s:.1%} of the sparse step")
    print(f"  sparse / dense step time: {s / d:.3f} (target <= 1.15)")
    print(f"  matmul bound: {peak / 1e9:.0f} GFLOP/s; model {flops / 1e9:.1f} GFLOP/step")
    print(
        "  nonzero fraction after projection: "
        + ", ".join(f"{k} {v:.4f}" for k, v in header["nonzero"].items())
    )
    steps = header["train_steps"]
    print(
        f"  projected wall time for {steps} steps: {steps * s / 3600:.2f} h sparse, "
        f"{steps * d / 3600:.2f} h dense (without evals / checkpoints)"
    )
    return {"dense": tokens / d, "sparse": tokens / s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: the preset's")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another sparse-lens checkout to compare against",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    worker_argv = [
        "--preset",
        args.preset,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        *(["--threads", str(args.threads)] if args.threads else []),
        *(arg for override in args.overrides for arg in ("--set", override)),
    ]
    checkouts = {"this": ROOT}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    workers = {name: Worker(path, worker_argv) for name, path in checkouts.items()}
    print(workers["this"].header["shape"])
    rounds: dict[str, list[dict]] = {name: [] for name in workers}
    try:
        for i in range(args.rounds):
            order = list(workers) if i % 2 == 0 else list(reversed(workers))
            for name in order:
                rounds[name].append(workers[name].round())
    finally:
        for w in workers.values():
            w.close()
    rates = {name: summarise(name, workers[name].header, rounds[name]) for name in workers}
    if "baseline" in rates:
        for mode in ("sparse", "dense"):
            paired = statistics.median(
                b[mode] / t[mode] for t, b in zip(rounds["this"], rounds["baseline"], strict=True)
            )
            print(
                f"{mode} tokens/s, this / baseline: "
                f"{rates['this'][mode] / rates['baseline'][mode]:.2f}x of the medians, "
                f"{paired:.2f}x median of the per-round ratios"
            )


if __name__ == "__main__":
    main()
