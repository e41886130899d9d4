"""Task files: parse and validate one declarative TOML file per task.

A task file says, in data, everything needed to build contrast pairs (see the repository's
``tasks/*.toml`` for twenty worked examples)::

    name = "single_double_quote"            # must equal the file name (without .toml)
    description = "Close a string with the quote that opened it."
    answer_a = '")'                         # continuation that is right on side A
    answer_b = "')"                         # ... on side B (both may use {slots})
    templates = ['''{setup}    print({quote}{text}''']

    [contrast.quote]                        # WHERE the two prompts of a pair differ:
    a = ['"']                               # the value of this slot on side A
    b = ["'"]                               # ... and on side B
                                            # (or `values = [...]`: two different draws)
    [slots]                                 # shared by both sides of a pair
    setup = ["", "import sys\\n"]
    text = ["Loading data", "Done"]

    distinct = [["first", "second"]]        # optional: slots that must render differently
    linked = [["header", "indent"]]         # optional: slots drawn with the same index

Templates, slot values, contrast values and answers are all templates: ``{name}`` inserts a
slot (slots may nest, without cycles) and ``{{`` / ``}}`` are literal braces. Each slot is drawn
once per pair and used everywhere it appears, so a pair differs only inside the spans of its
contrast slots; the generator records those spans and the tests check the character diff.

Errors name the file, the field and (found by searching the source, since TOML parsers report
no positions for values) the line.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_lens.errors import SparseLensError
from sparse_lens.schema import Reader, matches

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Contrast", "Task", "Template", "load_task", "parse_template"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TASK_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_REQUIRED_KEYS = {"name", "description", "answer_a", "answer_b", "templates"}
_TOP_KEYS = {
    "name",
    "description",
    "notes",
    "answer_a",
    "answer_b",
    "templates",
    "slots",
    "contrast",
    "distinct",
    "linked",
}

# A parsed template: literal text and slot references, in order.
Template = tuple[tuple[bool, str], ...]  # (is_slot, text-or-slot-name)


@dataclass(frozen=True)
class Contrast:
    """A slot whose value differs inside a pair: drawn from ``a`` on side A, ``b`` on side B.

    ``same_pool`` means the file gave one ``values`` list: each side draws its own value from it
    and the two draws must render differently.
    """

    name: str
    a: tuple[Template, ...]
    b: tuple[Template, ...]
    a_text: tuple[str, ...]
    b_text: tuple[str, ...]
    same_pool: bool


@dataclass(frozen=True)
class Task:
    """One validated task file. Build pairs with :func:`sparse_lens.tasks.generate_pairs`."""

    name: str
    description: str
    answer_a: Template
    answer_b: Template
    answer_a_text: str
    answer_b_text: str
    templates: tuple[Template, ...]
    template_texts: tuple[str, ...]
    slots: dict[str, tuple[Template, ...]]
    slot_texts: dict[str, tuple[str, ...]]
    contrast: dict[str, Contrast]
    distinct: tuple[tuple[str, ...], ...] = ()
    # slot -> the slot whose drawn index it reuses (the first of its `linked` group)
    links: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    path: str | None = field(default=None, compare=False)

    @property
    def differs(self) -> tuple[str, ...]:
        """The slot names where the two prompts of a pair differ (the ``[contrast.*]`` tables)."""
        return tuple(self.contrast)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, answers {self.answer_a_text!r} / {self.answer_b_text!r})"


# --------------------------------------------------------------------------------------------
# Templates


def parse_template(text: str) -> Template:
    """Split ``text`` into literal pieces and ``{slot}`` references (``{{``/``}}`` escape).

    Raises ValueError (turned into a SparseLensError with file and field by the loader).
    """
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            close = text.find("}", i + 1)
            if close < 0:
                raise ValueError(
                    f"unclosed '{{' at {_excerpt(text, i)!r} (write '{{{{' for a literal brace)"
                )
            name = text[i + 1 : close]
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"bad slot reference {text[i : close + 1]!r} (slot names are identifiers; "
                    "write '{{' and '}}' for literal braces)"
                )
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, name))
            i = close + 1
        elif ch == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ValueError(
                f"single '}}' at {_excerpt(text, i)!r} (write '}}}}' for a literal brace)"
            )
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append((False, "".join(literal)))
    return tuple(parts)


def _excerpt(text: str, i: int) -> str:
    return text[max(0, i - 10) : i + 10]


def _refs(template: Template) -> set[str]:
    return {value for is_slot, value in template if is_slot}


# --------------------------------------------------------------------------------------------
# Locating fields in the source (TOML parsers give no positions for values)


class _Locator:
    def __init__(self, source: str):
        self.lines = source.splitlines()

    def line(self, field: str, needle: str | None = None) -> int | None:
        """Best-effort 1-based line of ``field`` (dotted, with optional ``[i]`` index)."""
        parts = re.sub(r"\[\d+\]", "", field).split(".")
        found = None
        for k in range(len(parts), 0, -1):
            header = self._header(parts[:k])
            if header is None:
                continue
            found = header if k == len(parts) else self._key(parts[k], header + 1)
            break
        if found is None:
            found = self._key(parts[0], 0)
        if found is None:
            return None
        if needle and needle.strip():
            first = next(line for line in needle.splitlines() if line.strip()).strip()
            for i in range(found, len(self.lines)):
                if first in self.lines[i]:
                    return i + 1
        return found + 1

    def _header(self, table: list[str]) -> int | None:
        pattern = re.compile(
            r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]\s*(#.*)?$"
        )
        return next((i for i, line in enumerate(self.lines) if pattern.match(line)), None)

    def _key(self, key: str, start: int) -> int | None:
        pattern = re.compile(r"^\s*(" + re.escape(key) + r'|"' + re.escape(key) + r'")\s*=')
        for i in range(start, len(self.lines)):
            if i > start and self.lines[i].lstrip().startswith("[") and start > 0:
                if re.match(r"^\s*\[[^\]\[]*\]\s*(#.*)?$", self.lines[i]):
                    return None  # left the table
            if pattern.match(self.lines[i]):
                return i
        return None


class _TaskReader(Reader):
    """The schema :class:`~sparse_lens.schema.Reader`, with each error's line in the file."""

    def __init__(self, data: Any, source: Path, locator: _Locator, where: str = ""):
        self.locator = locator
        super().__init__(data, source, where)

    def fail(self, key: str, message: str, needle: str | None = None) -> SparseLensError:
        field = self.field_name(key)
        line = self.locator.line(field, needle)
        where = f"line {line}: " if line is not None else ""
        error = SparseLensError(where + message, path=self.source, field=field)
        error.line = line  # type: ignore[attr-defined]
        return error

    def child(self, key: str, *default: Any) -> _TaskReader:
        return _TaskReader(
            self.mapping(key, *default), Path(self.source), self.locator, self.field_name(key)
        )

    def refuse_unknown(self, allowed: set[str]) -> None:
        """Refuse keys outside ``allowed`` before any other check (a typo reads better so)."""
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")

    def template(self, key: str, text: str) -> Template:
        try:
            return parse_template(text)
        except ValueError as error:
            raise self.fail(key, str(error), needle=text) from None

    def strings(self, key: str) -> list[str]:
        """A non-empty array of strings (repeats are fine: they weight a value)."""
        values = self.array(key)
        if not values:
            raise self.fail(key, "must be a non-empty array of strings")
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", f"must be a string, got {type(item).__name__}")
        return values

    def templates(self, key: str) -> tuple[list[str], tuple[Template, ...]]:
        """(texts, parsed templates) of a non-empty array of template strings."""
        texts = self.strings(key)
        return texts, tuple(self.template(f"{key}[{i}]", t) for i, t in enumerate(texts))

    def groups(self, key: str) -> list[list[str]]:
        """An array of arrays of at least two slot names (``distinct``, ``linked``)."""
        groups = self.array(key, [])
        for i, group in enumerate(groups):
            if not (isinstance(group, list) and len(group) >= 2 and matches(group, list[str])):
                raise self.fail(f"{key}[{i}]", "must be an array of at least two slot names")
        return groups


# --------------------------------------------------------------------------------------------
# Loading


def load_task(path: str | Path) -> Task:
    """Read and validate one task file; any problem raises SparseLensError naming file and field."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SparseLensError(f"cannot read task file ({error.strerror})", path=path) from None
    except UnicodeDecodeError:
        raise SparseLensError("task file is not UTF-8 text", path=path) from None
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        # the parser's message carries "(at line L, column C)"
        raise SparseLensError(f"invalid TOML: {error}", path=path) from None
    return _build(path, source, data)


def _build(path: Path, source: str, data: dict) -> Task:
    r = _TaskReader(data, path, _Locator(source))
    r.refuse_unknown(_TOP_KEYS)

    name = r.text("name")
    if not _TASK_NAME_RE.match(name):
        raise r.fail("name", f"{name!r} is not a task name (lowercase letters, digits, '_')")
    if name != path.stem:
        raise r.fail("name", f"{name!r} must match the file name {path.stem!r}")
    description = r.text("description")
    if not description.strip() or "\n" in description.strip():
        raise r.fail("description", "must be one non-empty line")
    notes = r.text("notes", "")

    # slots
    raw_slots = r.child("slots", {})
    slot_texts: dict[str, tuple[str, ...]] = {}
    slots: dict[str, tuple[Template, ...]] = {}
    for slot, values in raw_slots.data.items():
        misplaced = slot in _REQUIRED_KEYS or not matches(values, list[str])
        if slot in _TOP_KEYS and slot not in data and misplaced:
            raise raw_slots.fail(
                slot,
                f"{slot!r} landed inside [slots]: in TOML, top-level keys must come before "
                "the first [table] header; move it up",
            )
        if not _NAME_RE.match(slot):
            raise raw_slots.fail(slot, f"slot name {slot!r} is not an identifier")
        texts, parsed = raw_slots.templates(slot)
        slot_texts[slot], slots[slot] = tuple(texts), parsed

    # contrast
    if not r.mapping("contrast", {}):
        raise r.fail(
            "contrast",
            "is missing: declare where a pair differs with a [contrast.SLOT] table "
            "holding `a = [...]` and `b = [...]` (or `values = [...]`)",
        )
    raw_contrast = r.child("contrast")
    contrast: dict[str, Contrast] = {}
    for slot in raw_contrast.data:
        if not _NAME_RE.match(slot):
            raise raw_contrast.fail(slot, f"slot name {slot!r} is not an identifier")
        if slot in slots:
            raise raw_contrast.fail(
                slot, f"slot {slot!r} is also in [slots]; a slot is shared or contrasted"
            )
        spec = raw_contrast.child(slot)
        keys = set(spec.data)
        if keys == {"values"}:
            texts, parsed = spec.templates("values")
            if len(texts) < 2:
                raise spec.fail("values", "needs at least two values to contrast")
            contrast[slot] = Contrast(slot, parsed, parsed, tuple(texts), tuple(texts), True)
        elif keys == {"a", "b"}:
            a_texts, a = spec.templates("a")
            b_texts, b = spec.templates("b")
            contrast[slot] = Contrast(slot, a, b, tuple(a_texts), tuple(b_texts), False)
        else:
            raise raw_contrast.fail(
                slot, f"must have exactly `a` and `b`, or `values` (got {sorted(keys)})"
            )

    # answers and templates
    answers = []
    for key in ("answer_a", "answer_b"):
        text = r.text(key)
        if not text:
            raise r.fail(
                key, "must not be empty (it is the continuation whose first token is scored)"
            )
        answers.append((text, r.template(key, text)))
    template_texts, templates = r.templates("templates")

    # references resolve, no cycles, every template reaches a contrast slot
    known = set(slots) | set(contrast)
    graph: dict[str, set[str]] = {}

    def check_refs(template: Template, where: str) -> set[str]:
        refs = _refs(template)
        missing = sorted(refs - known)
        if missing:
            raise r.fail(
                where,
                f"uses unknown slot {{{missing[0]}}} (known: {', '.join(sorted(known)) or 'none'})",
                needle="{" + missing[0] + "}",
            )
        return refs

    for slot, values in slots.items():
        graph[slot] = set()
        for i, t in enumerate(values):
            graph[slot] |= check_refs(t, f"slots.{slot}[{i}]")
    for slot, spec in contrast.items():
        graph[slot] = set()
        for side, values, texts in (("a", spec.a, spec.a_text), ("b", spec.b, spec.b_text)):
            side_key = "values" if spec.same_pool else side
            for i, (t, text) in enumerate(zip(values, texts, strict=True)):
                refs = check_refs(t, f"contrast.{slot}.{side_key}[{i}]")
                nested = sorted(refs & set(contrast))
                if nested:
                    raise r.fail(
                        f"contrast.{slot}.{side_key}[{i}]",
                        f"a contrast value may not use another contrast slot {{{nested[0]}}}",
                        needle=text,
                    )
                graph[slot] |= refs
    cycle = _find_cycle(graph)
    if cycle:
        first = cycle[0]
        table = "contrast" if first in contrast else "slots"
        raise r.fail(
            f"{table}.{first}", "slots refer to each other in a cycle: " + " -> ".join(cycle)
        )

    closure = {slot: _reach(graph, slot) for slot in graph}
    for (_, template), key in zip(answers, ("answer_a", "answer_b"), strict=True):
        check_refs(template, key)
    for i, (template, text) in enumerate(zip(templates, template_texts, strict=True)):
        refs = check_refs(template, f"templates[{i}]")
        reached = set(refs)
        for ref in refs:
            reached |= closure[ref]
        if not reached & set(contrast):
            raise r.fail(
                f"templates[{i}]",
                f"uses no contrast slot ({', '.join(sorted(contrast))}), so its two prompts "
                "would be identical",
                needle=text,
            )

    # distinct groups
    distinct = []
    for i, group in enumerate(r.groups("distinct")):
        for g in group:
            if g not in known:
                raise r.fail(f"distinct[{i}]", f"names unknown slot {g!r}", needle=g)
        distinct.append(tuple(group))

    # linked groups: shared slots of equal length that draw one index together
    links: dict[str, str] = {}
    order = list(slots)
    for i, group in enumerate(r.groups("linked")):
        for g in group:
            if g not in slots:
                why = "is a contrast slot" if g in contrast else "is not in [slots]"
                raise r.fail(
                    f"linked[{i}]", f"slot {g!r} {why}; only shared slots can be linked", needle=g
                )
            if g in links:
                raise r.fail(f"linked[{i}]", f"slot {g!r} is in two linked groups", needle=g)
        sizes = {g: len(slots[g]) for g in group}
        if len(set(sizes.values())) != 1:
            raise r.fail(f"linked[{i}]", f"linked slots need equally many values, got {sizes}")
        leader = min(group, key=order.index)
        links.update({g: leader for g in group})

    return Task(
        name=name,
        description=description.strip(),
        answer_a=answers[0][1],
        answer_b=answers[1][1],
        answer_a_text=answers[0][0],
        answer_b_text=answers[1][0],
        templates=templates,
        template_texts=tuple(template_texts),
        slots=slots,
        slot_texts=slot_texts,
        contrast=contrast,
        distinct=tuple(distinct),
        links=links,
        notes=notes.strip(),
        path=str(path),
    )


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return seen


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
