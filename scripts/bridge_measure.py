"""Measure post-hoc bridges on the shipped pair and steer the dense model's quote answer.

    sparse-lens bridge fit stdlib-dense stdlib-sparse --out runs/bridges-stdlib   # ~8 min, 1 thread
    python scripts/bridge_measure.py runs/bridges-stdlib --json runs/bridges-stdlib/measure.json

1. The per-site evaluation `bridge fit` stored (NMSE both ways, hybrid KL) next to untrained
   bridges of the same seed, and the factor between them.
2. The quote-type node: of the shipped quote circuit's residual-read nodes, the one whose value
   in the sparse model differs most between the two prompts of a pair (RMS of the paired
   difference over all tokens, over the node's spread; train-split pairs, so the steering
   pairs are not used to choose it).
3. Steering on 64 validation pairs (128 prompts): each prompt's node value set to its contrast
   partner's, token by token, at strengths 0..1; the dense model's logit(correct) -
   logit(wrong), against 8 random directions of the same norm (other channels' decoder rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from sparse_lens.bridges import load_bridged_models
from sparse_lens.bridges.steer import steering_node
from sparse_lens.bridges.store import write_json
from sparse_lens.bridges.task_steering import steer_task
from sparse_lens.io.checkpoint import ModelDir
from sparse_lens.tasks import get_task
from sparse_lens.tasks.generate import generate_pairs

TASK = "single_double_quote"
STRENGTHS = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0]


@torch.no_grad()
def quote_type_node(sparse, n_pairs: int = 128) -> tuple[str, list[dict]]:
    circuit = json.loads(
        ModelDir.resolve("stdlib-sparse").circuits.circuit_file(TASK).read_text()
    )
    reads = [n for n in circuit["nodes"] if n["type"] in ("attn_read", "mlp_read")]
    batch = generate_pairs(
        get_task(TASK), n_pairs, split="train", tokenizer=sparse.tokenizer
    ).batch()
    _, cache = sparse.run_with_cache(
        batch.tokens, names_filter=lambda name: name.endswith("hook_read")
    )
    mask = batch.mask
    scores = []
    for node in reads:
        values = cache[node["hook"]][..., node["index"]]
        paired = (values[0::2] - values[1::2])[mask[0::2]]  # partners differ only in the quote
        spread = float(values[mask].std()) or 1e-12
        scores.append(
            {
                "node": node["name"],
                "paired_rms_diff": float(paired.pow(2).mean().sqrt()),
                "effect_size": float(paired.pow(2).mean().sqrt()) / spread,
            }
        )
    scores.sort(key=lambda s: -s["effect_size"])
    return scores[0]["node"], scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bridges", help="a directory written by `sparse-lens bridge fit`")
    parser.add_argument("--n-pairs", type=int, default=64)
    parser.add_argument("--controls", type=int, default=8)
    parser.add_argument("--node", help="steer this node instead of the selected one")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    bridges, dense, sparse, info = load_bridged_models(args.bridges)
    report: dict = {"bridges": args.bridges}
    if "eval" in info:
        sites = []
        for ours, ctl in zip(info["eval"]["sites"], info["eval_untrained"]["sites"], strict=True):
            sites.append(
                {
                    "site": ours["site"],
                    "nmse_enc": ours["nmse_enc"],
                    "nmse_dec": ours["nmse_dec"],
                    "kl_enc": ours["kl_enc"],
                    "kl_dec": ours["kl_dec"],
                    "kl_roundtrip": ours["kl_roundtrip"],
                    "untrained_kl_enc": ctl["kl_enc"],
                    "untrained_kl_dec": ctl["kl_dec"],
                    "factor_enc": ctl["kl_enc"] / ours["kl_enc"],
                    "factor_dec": ctl["kl_dec"] / ours["kl_dec"],
                }
            )
        report["sites"] = sites
        report["kl_dense_sparse"] = info["eval"]["kl_sparse"]
        for s in sites:
            print(
                f"{s['site']:8s} NMSE enc {s['nmse_enc']:.3f} dec {s['nmse_dec']:.3f} | KL enc "
                f"{s['kl_enc']:.3f} (untrained {s['untrained_kl_enc']:.3f}, x{s['factor_enc']:.1f}) "
                f"dec {s['kl_dec']:.3f} (untrained {s['untrained_kl_dec']:.3f}, x{s['factor_dec']:.1f})"
            )

    node, scores = quote_type_node(sparse)
    node = args.node or node
    report["node_selection"] = scores
    steering_node(sparse, node)
    print(
        f"quote-type node: {node} (effect size {scores[0]['effect_size']:.2f}; next "
        f"{scores[1]['effect_size']:.2f})"
    )
    pairs = generate_pairs(
        get_task(TASK), args.n_pairs, split="validation", tokenizer=dense.tokenizer
    )
    result = steer_task(
        dense, sparse, bridges, node, pairs.batch(), STRENGTHS, n_controls=args.controls
    )
    report["steering"] = result
    print("strength  node   control mean  control min..max")
    for k, s in enumerate(STRENGTHS):
        column = [c[k] for c in result["control_logit_diff"]]
        print(
            f"{s:7.3f}  {result['logit_diff'][k]:6.3f}  {statistics.mean(column):6.3f}  "
            f"{min(column):6.3f}..{max(column):6.3f}"
        )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
