"""ModelDir / CircuitStore / io.records: one place knows a model's files, and the typed records
round-trip every shipped result file byte for byte."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_model

from sparse_lens import SparseLensError
from sparse_lens.circuits import Circuit
from sparse_lens.io.checkpoint import CircuitStore, ModelDir
from sparse_lens.io.records import MissedTarget, ModelEval
from sparse_lens.pretrained import PRETRAINED_DIR, shipped_model_names

SHIPPED = shipped_model_names()
SHIPPED_STORES = [ModelDir.resolve(name).circuits for name in SHIPPED]


def _shipped(pattern: str) -> list:
    return sorted(p for name in SHIPPED for p in (PRETRAINED_DIR / name).glob(pattern))


def test_both_models_ship_every_kind_of_result_file():
    assert SHIPPED == ["stdlib-dense", "stdlib-sparse"]
    assert len(_shipped("eval.json")) == 2
    assert len(_shipped("circuits/*.missed.json")) >= 2
    assert len(_shipped("circuits/*.validation.json")) >= 2


@pytest.mark.parametrize("path", _shipped("eval.json"), ids=lambda p: p.parent.name)
def test_every_shipped_eval_file_round_trips_byte_for_byte(path):
    text = path.read_text()
    evaluation = ModelEval.from_dict(json.loads(text), source=path)
    assert evaluation.to_json_str() == text
    assert len(evaluation.tasks) == 20 and evaluation.natural
    assert all(isinstance(row.loss, float) for row in evaluation.tasks)


@pytest.mark.parametrize("path", _shipped("circuits/*.missed.json"), ids=lambda p: p.name)
def test_every_shipped_missed_file_round_trips_byte_for_byte(path):
    text = path.read_text()
    missed = MissedTarget.from_dict(json.loads(text), source=path)
    assert missed.to_json_str() == text
    assert missed.task == path.name.removesuffix(".missed.json")
    assert missed.best_loss > missed.settings["target_loss"]  # it really missed


@pytest.mark.parametrize("path", _shipped("circuits/*.validation.json"), ids=lambda p: p.name)
def test_every_shipped_validation_file_round_trips_through_the_store(path, tmp_path):
    store = CircuitStore(tmp_path)
    task = path.name.removesuffix(".validation.json")
    report = CircuitStore(path.parent).validation(task)
    assert store.save_validation(task, report).read_text() == path.read_text()


@pytest.mark.parametrize("store", SHIPPED_STORES, ids=SHIPPED)
def test_shipped_store_lists_each_task_once_as_a_circuit_or_a_miss(store):
    circuits, missed = store.circuit_tasks(), store.missed_tasks()
    assert circuits and not set(circuits) & set(missed)
    assert sorted(circuits + missed) == sorted(row.task for row in store.evaluation().tasks)
    for task in circuits:
        assert store.validation(task) is not None and store.missed(task) is None


def test_solved_tasks_are_those_at_or_under_the_target():
    evaluation = SHIPPED_STORES[1].evaluation()
    for target in (0.0, 0.15, 10.0):
        solved = evaluation.solved(target)
        assert solved == [r.task for r in evaluation.tasks if r.loss <= target]
    assert evaluation.solved(10.0) == [r.task for r in evaluation.tasks]
    assert evaluation.task("with_as").task == "with_as"
    with pytest.raises(SparseLensError, match="nope"):
        evaluation.task("nope")


def test_malformed_records_name_the_file_and_field(tmp_path):
    path = tmp_path / "eval.json"
    good = json.loads((PRETRAINED_DIR / SHIPPED[0] / "eval.json").read_text())
    bad = {**good, "tasks": [dict(good["tasks"][0], loss="0.3")]}
    path.write_text(json.dumps(bad))
    store = CircuitStore(tmp_path / "circuits", eval_file=path)
    with pytest.raises(SparseLensError, match=r"eval\.json: field 'tasks\[0\]\.loss': expected float"):
        store.evaluation()
    path.write_text(json.dumps({**good, "extra": 1}))
    with pytest.raises(SparseLensError, match=r"field 'extra': unknown field"):
        store.evaluation()
    path.write_text("{not json")
    with pytest.raises(SparseLensError, match=r"eval\.json: cannot read the evaluation"):
        store.evaluation()
    (tmp_path / "circuits").mkdir()
    store.missed_file("t").write_text(json.dumps({"task": "t", "best_loss": 1.0}))
    with pytest.raises(SparseLensError, match=r"t\.missed\.json: field 'full_loss': missing key"):
        store.missed("t")
    with pytest.raises(SparseLensError, match="no eval.json"):
        CircuitStore(tmp_path).evaluation()


def test_a_task_holds_a_circuit_or_a_miss_never_both(tmp_path):
    model = tiny_model()
    store = ModelDir(tmp_path, "m").circuits
    assert store.circuit_tasks() == store.missed_tasks() == [] and store.evaluation() is None
    miss = MissedTarget("quote", best_loss=0.4, full_loss=0.9, settings={"target_loss": 0.15})
    store.save_missed(miss)
    assert store.missed("quote") == miss and store.missed_tasks() == ["quote"]
    circuit = Circuit.build(
        model, [("blocks.0.mlp.hook_read", 1)], task="quote", split="validation",
        target_loss=0.15, achieved_loss=0.1, calibrated_loss=0.1, logit_scale=1.0,
        logit_shift=0.0, ablation="mean", seed=0,
    )
    path = store.save_circuit(circuit)
    assert path == tmp_path / "circuits" / "quote.json"
    assert store.circuit_tasks() == ["quote"] and store.missed("quote") is None
    assert Circuit.load(path, model) == circuit
    store.save_validation("quote", {"full_loss": 0.05})
    assert store.validation("quote") == {"full_loss": 0.05}
    store.save_circuit(circuit)  # a new circuit: the old report does not describe it
    assert store.validation("quote") is None
    store.save_validation("quote", {"full_loss": 0.05})
    store.save_missed(miss)  # a later pass missed: the stale circuit and its report go
    assert store.circuit_tasks() == [] and store.validation("quote") is None


def test_model_dir_resolves_paths_and_shipped_names_once(tmp_path, monkeypatch):
    shipped = ModelDir.resolve("stdlib-sparse")
    assert shipped.path == PRETRAINED_DIR / "stdlib-sparse" and shipped.shipped
    assert shipped.provenance()["finished"] is True
    assert ModelDir.resolve(shipped) is shipped
    assert shipped.circuits.eval_file == shipped.path / "eval.json"
    tiny_model().save_pretrained(tmp_path / "stdlib-sparse")
    monkeypatch.chdir(tmp_path)  # a directory of that name beside the user wins over the package
    local = ModelDir.resolve("stdlib-sparse")
    assert local.path.resolve() == (tmp_path / "stdlib-sparse").resolve() and not local.shipped
    assert local.load().cfg == tiny_model().cfg
    with pytest.raises(SparseLensError, match="no such model directory"):
        ModelDir.resolve(tmp_path / "missing")
    with pytest.raises(SparseLensError, match="neither a model directory nor a shipped model"):
        ModelDir.resolve("no-such-model")
    with pytest.raises(SparseLensError, match="training.json: no training record"):
        local.provenance()
