"""sparse_lens.schema: every file reader's errors name the file and the dotted field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from sparse_lens.errors import SparseLensError
from sparse_lens.schema import Reader, dataclass_from_dict


@dataclass
class _Record:
    steps: int
    lr: float = 0.1
    name: str | None = None
    sites: tuple[str, ...] = ()

    def __post_init__(self):
        if self.steps < 1:
            raise SparseLensError("must be >= 1", field="steps")


def test_dataclass_from_dict_coerces_and_refuses_by_name():
    record = dataclass_from_dict(_Record, {"steps": 3, "lr": 1, "sites": ["a", "b"]})
    assert record == _Record(steps=3, lr=1.0, sites=("a", "b"))
    assert isinstance(record.lr, float)
    with pytest.raises(SparseLensError, match=r"f\.json: field 'train\.stpes': unknown field"):
        dataclass_from_dict(_Record, {"stpes": 3}, source="f.json", prefix="train.")
    with pytest.raises(SparseLensError, match=r"f\.json: field 'steps': expected int, got str"):
        dataclass_from_dict(_Record, {"steps": "3"}, source="f.json")
    with pytest.raises(SparseLensError, match=r"field 'steps': expected int, got bool"):
        dataclass_from_dict(_Record, {"steps": True})
    with pytest.raises(SparseLensError, match=r"f\.json: field 'steps': must be >= 1"):
        dataclass_from_dict(_Record, {"steps": 0}, source="f.json")
    with pytest.raises(SparseLensError, match=r"f\.json: must be a JSON object"):
        dataclass_from_dict(_Record, [1], source="f.json")


def test_reader_nested_fields_and_unknown_keys():
    data = {"n": 2, "search": {"steps": "60", "x": 1.5}, "nodes": [{"hook": 3}], "extra": 0}
    top = Reader(data, "c.json")
    assert top.integer("n", minimum=1) == 2
    assert top.integer("missing", 7) == 7
    search = top.child("search")
    assert search.number("x") == 1.5
    with pytest.raises(SparseLensError, match=r"c\.json: field 'search\.steps': expected an integer"):
        search.integer("steps")
    node = top.item("nodes", 0, top.array("nodes")[0])
    with pytest.raises(SparseLensError, match=r"field 'nodes\[0\]\.hook': expected a string"):
        node.text("hook")
    with pytest.raises(SparseLensError, match=r"field 'extra': unknown field"):
        top.done()
    with pytest.raises(SparseLensError, match=r"field 'q': missing key"):
        Reader({}, "c.json").text("q")
    with pytest.raises(SparseLensError, match=r"field 'x': expected a finite number"):
        Reader({"x": float("nan")}).number("x")


def _circuit_dict():
    import json

    from sparse_lens.pretrained import PRETRAINED_DIR

    path = PRETRAINED_DIR / "stdlib-sparse" / "circuits" / "single_double_quote.json"
    return json.loads(path.read_text())


def test_every_config_and_record_reader_names_the_file_and_field(tmp_path):
    """SparseConfig, TrainConfig, the run tables, PruneConfig, Circuit and the viewers' reader
    all go through this module, so their errors read the same way."""
    import json

    from sparse_lens.circuits import Circuit, PruneConfig
    from sparse_lens.config import SparseConfig
    from sparse_lens.train.config import TrainConfig, config_from_dict
    from sparse_lens.viz.circuit_data import circuit_data

    cases = [
        (lambda: SparseConfig.from_dict({"d_model": "8"}, source="c.json"), "c.json", "d_model"),
        (lambda: SparseConfig.from_dict({"n_layer": 2}, source="c.json"), "c.json", "n_layer"),
        (lambda: TrainConfig.from_dict({"steps": 1.5}, source="r.toml"), "r.toml", "steps"),
        (lambda: TrainConfig.from_dict({"lr": -1.0}, source="r.toml"), "r.toml", "lr"),
        (lambda: config_from_dict({"train": [], "model": {}}, source="r.toml"), "r.toml", "train"),
        (lambda: PruneConfig.from_dict({"steps": "60"}, source="s.json"), "s.json", "steps"),
        (lambda: PruneConfig.from_dict({"search": [[1, "a"]]}, source="s.json"), "s.json", "search"),
    ]
    data = _circuit_dict()
    data["nodes"][1] = {**data["nodes"][1], "colour": "red"}
    cases.append((lambda: Circuit.from_dict(data, source="q.json"), "q.json", "nodes[1].colour"))
    data2 = _circuit_dict()
    data2["edges"][0]["weight"] = "big"
    cases.append((lambda: Circuit.from_dict(data2, source="q.json"), "q.json", "edges[0].weight"))
    viz = _circuit_dict()
    viz["nodes"][2]["index"] = "3"
    path = tmp_path / "v.json"
    path.write_text(json.dumps(viz))
    cases.append((lambda: circuit_data(path), str(path), "nodes[2].index"))
    for build, source, field in cases:
        with pytest.raises(SparseLensError) as info:
            build()
        assert (info.value.path, info.value.field) == (source, field), str(info.value)
        assert str(info.value).startswith(f"{source}: field '{field}': ")
    assert PruneConfig.from_dict({"lr": 1}).lr == 1.0  # TOML/JSON ints fill float fields
    assert Circuit.from_dict(_circuit_dict()).to_dict() == _circuit_dict()
    assert circuit_data(_circuit_dict()).nodes[0].name == _circuit_dict()["nodes"][0]["name"]


def test_the_cli_asks_each_ablation_mode_whether_it_needs_the_mean_cache():
    from sparse_lens.circuits.registry import ablation_class, ablation_names
    from sparse_lens.cli.circuits import _needs_cache

    for mode in ablation_names():
        assert _needs_cache(mode) == ablation_class(mode).needs_cache
    assert not _needs_cache("zero") and _needs_cache("zero", "mean")


def test_nested_sequences_are_coerced_to_the_declared_types():
    @dataclass
    class _Runs:
        search: tuple[tuple[float, float], ...] = ()
        names: list[str] = dataclasses.field(default_factory=list)

    runs = dataclass_from_dict(_Runs, {"search": [[1, 10], [2.5, 3]], "names": ("a",)})
    assert runs.search == ((1.0, 10.0), (2.5, 3.0)) and isinstance(runs.search[0], tuple)
    assert all(isinstance(x, float) for run in runs.search for x in run)
    assert runs.names == ["a"]
