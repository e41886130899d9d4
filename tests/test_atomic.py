"""sparse_lens.io.atomic: a write either lands whole or leaves the old file and no debris."""

from __future__ import annotations

import json

import pytest

from sparse_lens.io import atomic


def test_writes_land_whole_and_make_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    atomic.write_json(target, {"b": 1, "a": [1.5, None]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    atomic.write_json(target, {"z": 0}, newline=False)
    assert target.read_text() == '{\n  "z": 0\n}'
    atomic.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    with pytest.raises(ValueError):  # NaN is refused before anything is written
        atomic.write_json(target, {"x": float("nan")}, allow_nan=False)
    assert target.read_text() == "old"


def test_the_temporary_file_is_a_sibling_so_the_rename_stays_on_one_filesystem(tmp_path):
    target = tmp_path / "x.json"
    with atomic.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".x.json.")
        tmp.write_text(json.dumps([1]))
        assert not target.exists()
    assert json.loads(target.read_text()) == [1]
