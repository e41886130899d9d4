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
import shutil

import torch

from sparse_lens.io.atomic import write_json
from sparse_lens.io.checkpoint import ModelDir
from sparse_lens.pretrained import PRETRAINED_DIR
from sparse_lens.train import heldout_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="training output directory")
    parser.add_argument("name", help="shipped model name, e.g. stdlib-sparse")
    args = parser.parse_args()

    run = ModelDir.resolve(args.run)
    training = run.provenance()
    if not training.get("finished"):
        raise SystemExit(f"{run.path} has not finished training ({training.get('steps')} steps)")
    model = run.load()
    storage = {}
    if model.cfg.bigram_table != "off":
        storage["bigram.W_bigram"] = torch.float16
    shipped = ModelDir(PRETRAINED_DIR / args.name, args.name)
    model.save_pretrained(shipped.path, storage_dtypes=storage)
    shutil.copy2(run.provenance_file, shipped.provenance_file)
    shutil.copy2(run.metrics_file, shipped.metrics_file)

    train_cfg = training["train_config"]
    measured = heldout_loss(
        shipped.load(), batch_size=train_cfg["batch_size"], n_batches=train_cfg["eval_batches"]
    )
    if measured.manifest_hash != training["corpus_manifest_hash"]:
        raise SystemExit("this interpreter's standard library is not the corpus the run saw")
    training["shipped_heldout_loss"] = measured.loss
    training["shipped_storage_dtypes"] = {
        k: str(v).removeprefix("torch.") for k, v in storage.items()
    }
    write_json(shipped.provenance_file, training)
    size = sum(f.stat().st_size for f in shipped.path.rglob("*") if f.is_file())
    print(
        f"{args.name}: held-out loss {training['final_heldout_loss']:.4f} trained, "
        f"{measured.loss:.4f} shipped; {size / 1e6:.1f} MB in {shipped.path}"
    )


if __name__ == "__main__":
    main()
