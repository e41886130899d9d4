"""Dense vs sparse execution path: forward tokens/s of random weight-sparse models, in one run.

    python benchmarks/sparse_forward.py [--d-models 256 512 1024 2048]
                                        [--l0 4 16 64 256] [--layers 2] [--tokens 512]
                                        [--threads 2] [--repeats 3]

For each width and weight density (L0 = 1/N of every matrix's entries nonzero, the unembedding
included; the bigram table stays dense as in training) a random model runs the same no-grad
forward twice per repeat: with ``sparse_execution(False)`` (plain dense matmuls) and with the
default path, where the per-matrix cost model (:mod:`sparse_lens.model.sparse_exec`) chooses
CSR or dense. The first sparse forward, which times each matrix once, is excluded (it is paid
once per process). Printed: tokens/s of each, their ratio, and how many matrices chose CSR.
Forwards alternate between the paths, so a machine whose load changes hurts both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _random_model(d_model: int, n_layers: int, l0: int, seed: int = 0):
    from sparse_lens import SparseConfig, SparseTransformer

    cfg = SparseConfig(d_model=d_model, n_layers=n_layers, d_head=16, n_ctx=256, d_vocab=2048)
    model = SparseTransformer(cfg, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 and "bigram" not in name:
                param.mul_(torch.rand(param.shape, generator=generator) < 1 / l0)
    return model.eval()


def _forward_seconds(model, tokens: torch.Tensor, sparse: bool) -> float:
    from sparse_lens.model.sparse_exec import sparse_execution

    with torch.no_grad(), sparse_execution(sparse):
        start = time.perf_counter()
        model(tokens)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d-models", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--l0", type=int, nargs="+", default=[4, 16, 64, 256], help="1/N density")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per forward (pos 128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sparse_lens.model.sparse_exec import COST_MODEL

    n_pos = 128
    batch = max(1, args.tokens // n_pos)
    print(
        f"{args.layers} layers, d_head 16, d_mlp 4 d_model, d_vocab 2048, {batch} x {n_pos} tokens "
        f"per forward, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(
        f"{'d_model':>7} {'L0':>7} {'dense tok/s':>12} {'sparse tok/s':>13} {'ratio':>6}  CSR chosen"
    )
    for d_model in args.d_models:
        for l0 in args.l0:
            model = _random_model(d_model, args.layers, l0)
            generator = torch.Generator().manual_seed(1)
            tokens = torch.randint(0, 2048, (batch, n_pos), generator=generator)
            COST_MODEL.clear()
            _forward_seconds(model, tokens, sparse=True)  # the cost model measures here
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.repeats):
                for sparse in (False, True):
                    best[sparse] = min(best[sparse], _forward_seconds(model, tokens, sparse))
            chosen = f"{sum(COST_MODEL.values())}/{len(COST_MODEL)} shapes"
            dense_rate, sparse_rate = (batch * n_pos / best[s] for s in (False, True))
            print(
                f"{d_model:>7} {'1/' + str(l0):>7} {dense_rate:>12.0f} {sparse_rate:>13.0f} "
                f"{sparse_rate / dense_rate:>5.2f}x  {chosen}"
            )
            del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
