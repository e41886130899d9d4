"""The models and circuits shipped inside the package: recorded numbers must be reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_lens import SparseTransformer
from sparse_lens.circuits import Circuit, hooked_loss, make_ablation, mean_cache_for, task_pairs
from sparse_lens.pretrained import PRETRAINED_DIR, shipped_model_names
from sparse_lens.train import heldout_loss

pytestmark = pytest.mark.slow
SHIPPED = ("stdlib-sparse", "stdlib-dense")
CIRCUITS = sorted(
    (name, path.stem)
    for name in SHIPPED
    for path in (PRETRAINED_DIR / name / "circuits").glob("*.json")
    if not path.name.endswith((".validation.json", ".missed.json"))
)


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return request.param, SparseTransformer.from_pretrained(request.param)


def test_both_models_ship_and_fit_the_size_budget():
    assert set(SHIPPED) <= set(shipped_model_names())
    size = sum(f.stat().st_size for name in SHIPPED for f in (PRETRAINED_DIR / name).rglob("*"))
    assert size <= 30e6, f"shipped models take {size / 1e6:.1f} MB"


def test_recorded_heldout_loss_matches_a_fresh_evaluation(shipped):
    name, model = shipped
    record = json.loads((PRETRAINED_DIR / name / "training.json").read_text())
    assert record["finished"] and record["steps"] == record["total_steps"]
    train = record["train_config"]
    fresh = heldout_loss(model, batch_size=train["batch_size"], n_batches=train["eval_batches"])
    if fresh.manifest_hash != record["corpus_manifest_hash"]:
        pytest.skip("this interpreter's standard library differs from the training corpus")
    assert fresh.loss == pytest.approx(record["shipped_heldout_loss"], abs=1e-4)
    # float16 storage of the bigram table moves the trained model's loss by far less than 0.1%
    assert fresh.loss == pytest.approx(record["final_heldout_loss"], rel=1e-3)


def test_sparse_model_is_sparse_and_wider_than_dense():
    sparse = SparseTransformer.from_pretrained("stdlib-sparse")
    dense = SparseTransformer.from_pretrained("stdlib-dense")
    assert sparse.cfg.d_model > dense.cfg.d_model
    for param_name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        stacked = getattr(sparse, param_name)
        assert float((stacked != 0).float().mean()) <= 1 / 16 + 1e-3, param_name
        assert float((getattr(dense, param_name) != 0).float().mean()) > 0.99, param_name
    recorded = [
        json.loads((PRETRAINED_DIR / n / "training.json").read_text())["shipped_heldout_loss"]
        for n in SHIPPED
    ]
    assert abs(recorded[1] - recorded[0]) <= 0.02 * recorded[0], recorded


@pytest.mark.parametrize(("model_name", "task"), CIRCUITS)
def test_shipped_circuit_loss_is_reproduced(model_name, task):
    model = SparseTransformer.from_pretrained(model_name)
    circuit = Circuit.load(PRETRAINED_DIR / model_name / "circuits" / f"{task}.json", model)
    cache = mean_cache_for(model, None, progress=False)  # the user cache dir
    pairs = task_pairs(
        model, task, circuit.settings["n_val_pairs"], seed=circuit.seed, split=circuit.split
    )
    with torch.no_grad():
        loss = hooked_loss(
            model, pairs, circuit.hooks(model, make_ablation(circuit.ablation, cache))
        )
    assert loss == pytest.approx(circuit.achieved_loss, abs=1e-4)
    assert circuit.target_met and loss <= circuit.target_loss
    report = json.loads(
        (PRETRAINED_DIR / model_name / "circuits" / f"{task}.validation.json").read_text()
    )
    assert report["circuit_only_loss"] <= report["full_loss"] + circuit.target_loss
