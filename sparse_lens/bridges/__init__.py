"""Bridges: explain a dense model through a weight-sparse one, and steer it through readable nodes.

Per sublayer site an encoder (dense -> sparse residual, Linear + AbsTopK) and a decoder (sparse
-> dense, Linear) on the residual stream before the norm (:mod:`.module`, :mod:`.sites`);
single-switch hybrid forwards (:mod:`.hybrid`); the loss (:mod:`.loss`); two ways to get
bridges, post hoc between trained models (:mod:`.fit`) or jointly while training the sparse
model (:mod:`.joint`); scoring (:mod:`.evaluate`); files (:mod:`.store`); steering
(:mod:`.steer`).
"""

from sparse_lens.bridges.evaluate import evaluate_bridges
from sparse_lens.bridges.fit import FitConfig, fit_bridges
from sparse_lens.bridges.hybrid import residuals_at_sites, run_from_site
from sparse_lens.bridges.loss import LossWeights, bridge_loss
from sparse_lens.bridges.module import Bridges, check_pair
from sparse_lens.bridges.sites import BridgeSite, bridge_sites
from sparse_lens.bridges.steer import steer, steering_hook, steering_node
from sparse_lens.bridges.store import load_bridged_models, load_bridges, save_bridges

__all__ = [
    "BridgeSite",
    "Bridges",
    "FitConfig",
    "LossWeights",
    "bridge_loss",
    "bridge_sites",
    "check_pair",
    "evaluate_bridges",
    "fit_bridges",
    "load_bridged_models",
    "load_bridges",
    "residuals_at_sites",
    "run_from_site",
    "save_bridges",
    "steer",
    "steering_hook",
    "steering_node",
]
