"""The joint route (the paper's): train a sparse model from scratch with the bridge losses
against a frozen dense model, on the ordinary trainer.

:class:`JointBridgeModel` is what the trainer sees: the sparse model's submodules under their
own names (so the weight sparsifier finds every sparse target and the saved model.safetensors
is a plain sparse model) plus ``bridges``. In training mode its loss is the bridge loss; in eval
mode (the trainer's held-out evaluation) it is the sparse model itself, so held-out losses are
the sparse model's CE and compare with plain runs. The dense model is held outside the module
tree: never trained, saved or moved by the trainer.

The output directory is a sparse-model checkpoint (resumable, loadable with
``SparseTransformer.from_pretrained``) with the bridges in its ``bridges/`` folder, written
inside the same atomic checkpoint save.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sparse_lens.bridges.loss import LossTerms, LossWeights, bridge_loss
from sparse_lens.bridges.module import Bridges
from sparse_lens.bridges.store import load_bridges, model_reference, save_bridges
from sparse_lens.errors import SparseLensError
from sparse_lens.train.checkpoint import append_metrics
from sparse_lens.train.trainer import Callback

BRIDGES_DIR = "bridges"


class JointBridgeModel(nn.Module):
    def __init__(self, sparse, dense, bridges: Bridges, weights: LossWeights, refs: dict[str, str]):
        super().__init__()
        bridges.check_models(dense, sparse)
        for name, child in sparse.named_children():
            self.add_module(name, child)
        self.bridges = bridges
        # Plain attributes, not submodules: the sparse model shares the children above, and
        # the dense model must stay out of the optimizer, the checkpoint and the sparsifier.
        self.__dict__["sparse"] = sparse
        self.__dict__["dense"] = dense.requires_grad_(False).eval()
        self.cfg = sparse.cfg
        self.weights = weights
        self.refs = refs
        self.last_terms: LossTerms | None = None

    @property
    def tokenizer(self):
        return self.sparse.tokenizer

    def train(self, mode: bool = True) -> JointBridgeModel:
        super().train(mode)
        self.sparse.train(mode)
        return self

    def forward(self, tokens, return_type="loss"):
        if not self.training:
            return self.sparse(tokens, return_type=return_type)
        if return_type != "loss":
            raise ValueError("the joint model trains on its loss only")
        self.last_terms = bridge_loss(self.dense, self.sparse, self.bridges, tokens, self.weights)
        return self.last_terms.total

    # The checkpoint's model.safetensors is the sparse model's alone (bridges go to bridges/).
    def state_dict(self, *args, **kwargs):
        return self.sparse.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.sparse.load_state_dict(state_dict, strict=strict, assign=assign)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(self.sparse.save_pretrained(directory))
        info = {"route": "joint", "weights": self.weights.to_dict()}
        save_bridges(
            self.bridges, directory / BRIDGES_DIR, self.refs["dense"], self.refs["sparse"], info
        )
        return directory


class LogBridgeTerms(Callback):
    """Adds the loss's parts (sparse CE, per-site NMSE and KL) to metrics.jsonl at each log."""

    def on_step_end(self, trainer, step: int, metrics) -> None:
        model = trainer.model
        logged = step % trainer.cfg.log_interval == 0 or step == trainer.cfg.steps
        if not trainer.env.is_main or not logged or model.last_terms is None:
            return
        terms = model.last_terms
        append_metrics(
            trainer.out_dir, {"step": step, "bridge_ce": terms.ce, "bridge_sites": terms.per_site}
        )


def train_joint(
    dense: str,
    run,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    weights: LossWeights | None = None,
    encoder_frac: float | None = 0.25,
    progress: bool = True,
    max_minutes: float | None = None,
):
    """Train the sparse model ``run`` describes, with bridges to the frozen ``dense`` model (a
    directory or shipped name), into ``out_dir``; the data are tokenized with the dense model's
    tokenizer. Returns the trainer's :class:`~sparse_lens.train.trainer.TrainResult`."""
    weights = weights or LossWeights()
    from sparse_lens.io.checkpoint import ModelDir, resolve_checkpoint_dir
    from sparse_lens.train.runner import train_from_config

    dense_located = ModelDir.resolve(dense)
    dense_dir = dense_located.path
    tokenizer_path = dense_located.tokenizer_file
    if not tokenizer_path.is_file():
        raise SparseLensError(
            "the dense model has no tokenizer.json; joint training tokenizes with it",
            path=dense_dir,
        )
    dense_model = dense_located.load()
    out_dir = Path(out_dir)
    refs = {"dense": model_reference(dense), "sparse": str(out_dir.resolve())}
    # The dense model's tokenizer, so the two vocabularies match by construction.
    forced = [f'tokenizer="{tokenizer_path.as_posix()}"', f"vocab_size={dense_model.cfg.d_vocab}"]

    def wrap(sparse):
        dense_model.to(next(sparse.parameters()).device)
        torch.manual_seed(0)
        bridges = Bridges(
            sparse.cfg.n_layers, dense_model.cfg.d_model, sparse.cfg.d_model, encoder_frac
        )
        saved = resolve_checkpoint_dir(out_dir) / BRIDGES_DIR
        if resume and saved.is_dir():
            loaded, _ = load_bridges(saved)
            bridges.load_state_dict(loaded.state_dict())
        return JointBridgeModel(sparse, dense_model, bridges, weights, refs)

    return train_from_config(
        run,
        out_dir,
        resume=resume,
        overrides=[*forced, *overrides] if not resume else list(overrides),
        callbacks=[LogBridgeTerms()],
        progress=progress,
        max_minutes=max_minutes,
        wrap_model=wrap,
    )
