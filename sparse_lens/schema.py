"""Reading the project's files: one place that turns a bad field into one clear error.

Every file sparse-lens reads (config.json, training presets, circuits, task files, validation
reports, pruning records) is a JSON object or TOML table. Two readers cover them all:

- :func:`dataclass_from_dict` builds a dataclass from a mapping: unknown keys and values of the
  wrong type are refused by name, using the dataclass's own annotations (``int``, ``float``,
  ``bool``, ``str``, ``X | None``, ``tuple[X, ...]``, ``list[X]``, ``dict``, ``Literal``).
- :class:`Reader` gives typed access to one object's keys for formats with nested or
  conditional structure (``reader.integer("n_nodes")``, ``reader.child("search")``), and
  :meth:`Reader.done` refuses the keys nobody asked for.

Both raise :class:`~sparse_lens.errors.SparseLensError` naming the file and the dotted field,
e.g. ``quote.json: field 'search.steps': expected an integer, got str '60'``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from sparse_lens.errors import SparseLensError

T = TypeVar("T")
_MISSING: Any = object()


def matches(value: Any, hint: Any) -> bool:
    """Whether a JSON/TOML value fits a type annotation (bools are not ints)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        item = next((a for a in args if a is not Ellipsis), Any)
        return isinstance(value, (tuple, list)) and all(matches(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    """A type annotation as a user reads it: ``int | None``, ``tuple[str, ...]``."""
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _coerce(value: Any, hint: Any) -> Any:
    """JSON has no tuples and TOML writes 1 for 1.0: give the dataclass what it declares
    (recursively, so ``[[1, 10]]`` becomes ``((1.0, 10.0),)`` for ``tuple[tuple[float, float], ...]``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None) and matches(value, arg):
                return _coerce(value, arg)
        return value
    if origin in (tuple, list) and isinstance(value, (tuple, list)):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) == len(value):
            items = [_coerce(v, arg) for v, arg in zip(value, args, strict=True)]
        else:
            item = next((a for a in args if a is not Ellipsis), Any)
            items = [_coerce(v, item) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def dataclass_from_dict(
    cls: type[T],
    data: Any,
    *,
    source: str | Path | None = None,
    what: str = "a JSON object / TOML table",
    exclude: typing.Collection[str] = (),
    prefix: str = "",
    noun: str = "field",
) -> T:
    """Build ``cls(**data)``, refusing unknown, missing and ill-typed fields by name.

    ``exclude`` lists dataclass fields a file may not set (runtime-only fields); ``prefix`` is
    prepended to field names in errors (``train.`` for a table inside a file); ``noun`` names
    what a key is in the unknown-key message ("training field"). Errors the dataclass's own
    ``__post_init__`` raises as SparseLensError get ``source`` attached.
    """
    if not isinstance(data, dict):
        raise SparseLensError(f"must be {what}, got {type(data).__name__}", path=source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in exclude}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SparseLensError(
            f"unknown {noun}; known {noun}s: {', '.join(sorted(fields))}",
            path=source,
            field=prefix + str(unknown[0]),
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SparseLensError("missing key", path=source, field=prefix + missing[0])
    values = checked_values(cls, data, source=source, prefix=prefix)
    try:
        return cls(**values)
    except SparseLensError as error:
        if source is None or error.path is not None:
            raise
        raise SparseLensError(
            str(error).split(": ", 1)[-1] if error.field else str(error),
            path=source,
            field=None if error.field is None else prefix + error.field,
        ) from None


def checked_values(
    cls: type,
    values: typing.Mapping[str, Any],
    *,
    source: str | Path | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """``values`` (field name -> value) checked against ``cls``'s annotations and coerced to
    them (see :func:`matches`); a dataclass's ``__post_init__`` uses it to check direct
    construction the same way a file is checked."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        hint = hints[name]
        if not matches(value, hint):
            raise SparseLensError(
                f"expected {describe(hint)}, got {type(value).__name__} {value!r}"[:240],
                path=source,
                field=prefix + name,
            )
        out[name] = _coerce(value, hint)
    return out


class Reader:
    """Typed access to the keys of one JSON object / TOML table read from ``source``.

    ``where`` is the dotted path of this object inside the file (``""`` at the top). Every
    accessor records the key it read, so :meth:`done` can refuse the rest as unknown.
    """

    def __init__(self, data: Any, source: str | Path | None = None, where: str = ""):
        self.source = None if source is None else str(source)
        self.where = where
        if not isinstance(data, dict):
            raise SparseLensError(
                f"must be a JSON object / TOML table, got {type(data).__name__}",
                path=self.source,
                field=where or None,
            )
        self.data = data
        self._read: set[str] = set()

    # ------------------------------------------------------------------ errors
    def field_name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> SparseLensError:
        """An error about ``key`` of this object (for checks beyond its type)."""
        return SparseLensError(message[:300], path=self.source, field=self.field_name(key))

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, "missing key")
            return default
        return self.data[key]

    def _typed(self, key: str, ok: bool, want: str, value: Any) -> None:
        if not ok:
            raise self.fail(key, f"expected {want}, got {type(value).__name__} {value!r}")

    # ------------------------------------------------------------------ accessors
    def has(self, key: str) -> bool:
        return key in self.data

    def value(self, key: str, hint: Any, default: Any = _MISSING) -> Any:
        """``key`` checked against a type annotation (see :func:`matches`)."""
        value = self._get(key, default)
        if key in self.data and not matches(value, hint):
            raise self.fail(key, f"expected {describe(hint)}, got {type(value).__name__} {value!r}")
        return _coerce(value, hint)

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if key in self.data:
            self._typed(key, isinstance(value, str), "a string", value)
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> int:
        value = self._get(key, default)
        if key in self.data:
            ok = isinstance(value, int) and not isinstance(value, bool)
            self._typed(key, ok, "an integer", value)
            if minimum is not None and value < minimum:
                raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> float:
        value = self._get(key, default)
        if key not in self.data:
            return value
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        )
        self._typed(key, ok, "a finite number", value)
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if key in self.data:
            self._typed(key, isinstance(value, bool), "true or false", value)
        return value

    def array(self, key: str, default: Any = _MISSING) -> list:
        value = self._get(key, default)
        if key in self.data:
            self._typed(key, isinstance(value, list), "a list", value)
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict:
        value = self._get(key, default)
        if key in self.data:
            self._typed(key, isinstance(value, dict), "an object", value)
        return value

    def child(self, key: str, default: Any = _MISSING) -> Reader:
        """A Reader over the object at ``key`` (``default`` when absent, e.g. ``{}``)."""
        return Reader(self.mapping(key, default), self.source, self.field_name(key))

    def item(self, key: str, index: int, value: Any) -> Reader:
        """A Reader over element ``index`` of the list at ``key``."""
        return Reader(value, self.source, f"{self.field_name(key)}[{index}]")

    def done(self, noun: str = "field") -> None:
        """Refuse every key of this object that no accessor read (``noun``: what a key is)."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise self.fail(
                str(unknown[0]), f"unknown {noun}; known here: {', '.join(sorted(self._read))}"
            )


__all__ = ["Reader", "checked_values", "dataclass_from_dict", "matches", "describe"]
