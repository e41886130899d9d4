"""Copy a finished training run into the package as a shipped model (maintainers only).

    python scripts/ship_model.py runs/stdlib-sparse stdlib-sparse

Writes sparse_lens/pretrained/<name>/: config.json, model.safetensors (sparse tensors as
indices + values; the dense bigram table stored in float16 to keep the package small),
tokenizer.json, training.json and metrics.jsonl. (The mean cache is not shipped: with its
resample bank it is ~12 MB, and it is rebuilt in seconds into the user cache.) training.json
gains ``shipped_heldout_loss``: the held-out loss of the model as shipped (after the float16
table), measured on the trainer's own held-out windows; tests recompute it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from sparse_lens import SparseTransformer
from sparse_lens.pretrained import PRETRAINED_DIR
from sparse_lens.train import heldout_loss

RUN_FILES = ("training.json", "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output directory")
    parser.add_argument("name", help="shipped model name, e.g. stdlib-sparse")
    args = parser.parse_args()

    training = json.loads((args.run / "training.json").read_text())
    if not training.get("finished"):
        raise SystemExit(f"{args.run} has not finished training ({training.get('steps')} steps)")
    model = SparseTransformer.from_pretrained(args.run)
    target = PRETRAINED_DIR / args.name
    storage = {}
    if model.cfg.bigram_table != "off":
        storage["bigram.W_bigram"] = torch.float16
    model.save_pretrained(target, storage_dtypes=storage)
    for name in RUN_FILES:
        shutil.copy2(args.run / name, target / name)

    shipped = SparseTransformer.from_pretrained(target)
    train_cfg = training["train_config"]
    measured = heldout_loss(
        shipped, batch_size=train_cfg["batch_size"], n_batches=train_cfg["eval_batches"]
    )
    if measured.manifest_hash != training["corpus_manifest_hash"]:
        raise SystemExit("this interpreter's standard library is not the corpus the run saw")
    training["shipped_heldout_loss"] = measured.loss
    training["shipped_storage_dtypes"] = {
        k: str(v).removeprefix("torch.") for k, v in storage.items()
    }
    (target / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(
        f"{args.name}: held-out loss {training['final_heldout_loss']:.4f} trained, "
        f"{measured.loss:.4f} shipped; {size / 1e6:.1f} MB in {target}"
    )


if __name__ == "__main__":
    main()
