"""sparse_lens.schema: every file reader's errors name the file and the dotted field."""

from __future__ import annotations

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
