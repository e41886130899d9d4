"""Natural instances: a task's decision found in real code nobody templated.

A miner scans Python source for places where the task's choice really occurs and cuts the
file there: the prompt is the source up to that point (up to ``context_chars`` characters,
starting at a line start; batches left-truncate to ``n_ctx`` tokens), and the file's true next
text decides which of the task's two answers is correct. Natural instances are single prompts,
not pairs. They are tokenised like templated prompts (the prompt must end on a token boundary
before both answers and the answers' first tokens must differ); instances that fail are skipped
and counted.

Miners (registered by task name in ``MINERS``):

- ``single_double_quote``: every one-line, non-f string literal directly followed by ``)``
  (found with :mod:`tokenize`); the prompt stops before the closing quote, the answer is
  ``")`` or ``')``.
- ``bracket_counting``: every list literal of plain elements (numbers, names, constants) found
  with :mod:`ast`, cut after its last element. Depth 1 (not inside another list, closed by one
  ``]``): answer ``]``. Depth 2 (the last element of an enclosing list, closed by ``]]``):
  answer ``]]``. Inner lists that are not last are skipped (the prefix cannot tell).
"""

from __future__ import annotations

import ast
import io
import math
import random
import tokenize
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sparse_lens.errors import SparseLensError
from sparse_lens.tasks.generate import Prompt, _score_batch

__all__ = [
    "MINERS",
    "NaturalInstance",
    "NaturalSet",
    "evaluate_natural",
    "mine_natural",
    "natural_tasks",
]


@dataclass(frozen=True)
class NaturalInstance:
    """One mined prompt with where it came from (``line`` is 1-based, where the cut is)."""

    prompt: Prompt
    path: str
    line: int


@dataclass
class NaturalSet:
    task: str
    instances: list[NaturalInstance]
    answers: tuple[str, str]
    found: int  # places found in the corpus
    skipped: int  # of those sampled, failed the token check
    files: int
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.instances)

    def batch(self, n_ctx: int | None = None):
        from sparse_lens.tasks.batch import make_batch

        return make_batch(
            [i.prompt for i in self.instances], n_ctx=n_ctx, pad_id=self.pad_id, task=self.task
        )


# A miner yields (cut offset, side) per place: the prompt is text[:cut], side 0 = answer A.
Miner = Callable[[str], Iterator[tuple[int, int]]]


@dataclass(frozen=True)
class _MinerSpec:
    answers: tuple[str, str]
    find: Miner


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    return starts


def _mine_quotes(text: str) -> Iterator[tuple[int, int]]:
    starts = _line_starts(text)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return
    for tok, nxt in zip(tokens, tokens[1:], strict=False):
        if tok.type != tokenize.STRING or nxt.type != tokenize.OP or nxt.string != ")":
            continue
        if nxt.start != tok.end or tok.start[0] != tok.end[0]:
            continue
        s = tok.string
        prefix_len = len(s) - len(s.lstrip("rRbBuUfF"))
        prefix, body = s[:prefix_len], s[prefix_len:]
        if "f" in prefix.lower() or body[:3] in ('"""', "'''") or len(body) < 3:
            continue  # f-strings tokenize differently from 3.12; skip empty strings too
        quote = body[0]
        if quote not in "\"'" or body[-1] != quote:
            continue
        end = starts[tok.end[0] - 1] + tok.end[1]  # offset just after the closing quote
        yield end - 1, 0 if quote == '"' else 1


_PLAIN = (ast.Constant, ast.Name, ast.Attribute)


def _plain(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, _PLAIN)


def _mine_brackets(text: str) -> Iterator[tuple[int, int]]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    lines = text.splitlines(keepends=True)
    starts = _line_starts(text)

    def offset(lineno: int, col_bytes: int) -> int:  # ast columns are UTF-8 byte offsets
        line = lines[lineno - 1] if lineno - 1 < len(lines) else ""
        return starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode("utf-8", "replace"))

    parents: dict[int, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[id(child)] = parent
    for node in ast.walk(tree):
        if not isinstance(node, ast.List) or not node.elts or not all(_plain(e) for e in node.elts):
            continue
        last = node.elts[-1]
        if last.end_lineno is None or last.end_col_offset is None:
            continue
        cut = offset(last.end_lineno, last.end_col_offset)
        after = text[cut : cut + 3]
        parent = parents.get(id(node))
        if isinstance(parent, ast.List):
            if parent.elts[-1] is node and after[:2] == "]]" and after[2:3] != "]":
                yield cut, 1
        elif after[:1] == "]" and after[1:2] != "]":
            yield cut, 0


MINERS: dict[str, _MinerSpec] = {
    "single_double_quote": _MinerSpec(('")', "')"), _mine_quotes),
    "bracket_counting": _MinerSpec(("]", "]]"), _mine_brackets),
}


def natural_tasks() -> list[str]:
    """Task names that have a natural-code miner."""
    return sorted(MINERS)


def _corpus_files(corpus: str | Path | Iterable[str | Path]) -> list[Path]:
    roots = [corpus] if isinstance(corpus, (str, Path)) else list(corpus)
    files: list[Path] = []
    for root in roots:
        root = Path(root)
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.py") if p.is_file())
        elif root.is_file():
            files.append(root)
        else:
            raise SparseLensError("corpus path does not exist", path=root)
    if not files:
        raise SparseLensError("no .py files in the corpus", path=", ".join(map(str, roots)))
    return files


def mine_natural(
    task: str,
    corpus: str | Path | Iterable[str | Path],
    tokenizer=None,
    *,
    max_instances: int = 500,
    seed: int = 0,
    context_chars: int = 2000,
) -> NaturalSet:
    """Find up to ``max_instances`` real instances of ``task`` in the ``.py`` files of ``corpus``.

    ``corpus`` is a file, a directory (searched recursively) or a list of them. Places are
    sampled (deterministically from ``seed``) from all places found, then tokenised with
    ``tokenizer`` (default: the stdlib tokenizer); duplicates and places failing the token
    check are skipped.
    """
    spec = MINERS.get(task)
    if spec is None:
        raise SparseLensError(
            f"no natural-code miner for task {task!r}; available: {', '.join(natural_tasks())}",
            field="natural",
        )
    if tokenizer is None:
        from sparse_lens.data.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    files = _corpus_files(corpus)
    places: list[tuple[int, int, int]] = []  # (file index, cut, side)
    texts: list[str] = []
    for index, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            texts.append("")
            continue
        texts.append(text)
        places += [(index, cut, side) for cut, side in spec.find(text)]
    random.Random(f"sparse-lens/natural/{task}/{seed}").shuffle(places)

    instances: list[NaturalInstance] = []
    seen: set[str] = set()
    skipped = 0
    position = 0
    while len(instances) < max_instances and position < len(places):
        chunk = places[position : position + 2 * (max_instances - len(instances)) + 16]
        position += len(chunk)
        items, meta = [], []
        for index, cut, side in chunk:
            text = texts[index]
            start = text.rfind("\n", 0, max(0, cut - context_chars)) + 1
            prompt = text[start:cut]
            if prompt in seen or not prompt.strip():
                continue
            seen.add(prompt)
            items.append((prompt, spec.answers))
            meta.append((index, cut, side))
        for (prompt, _), (index, cut, side), scored in zip(
            items, meta, _score_batch(tokenizer, items), strict=True
        ):
            if scored is None:
                skipped += 1
                continue
            if len(instances) < max_instances:
                tokens, answer_ids = scored
                line = texts[index].count("\n", 0, cut) + 1
                instances.append(
                    NaturalInstance(
                        Prompt(prompt, tokens, answer_ids, side), str(files[index]), line
                    )
                )
    eot = tokenizer.token_to_id("<|endoftext|>")
    return NaturalSet(
        task,
        instances,
        spec.answers,
        len(places),
        skipped,
        len(files),
        0 if eot is None else int(eot),
    )


def evaluate_natural(
    model,
    task: str,
    corpus: str | Path | Iterable[str | Path],
    *,
    max_instances: int = 500,
    seed: int = 0,
    batch_size: int = 64,
    tokenizer=None,
) -> dict:
    """Mine natural instances of ``task`` from ``corpus`` and evaluate ``model`` on them.

    Returns a JSON-ready dict: task, corpus counts, n_prompts, n_a / n_b (how many have each
    answer), loss, accuracy (over all, and per answer), p_correct.
    """
    import torch

    from sparse_lens.tasks.batch import evaluate_batch

    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    found = mine_natural(task, corpus, tok, max_instances=max_instances, seed=seed)
    if not found.instances:
        raise SparseLensError(
            f"found no usable {task} instances in {found.files} file(s) ({found.found} places, "
            f"{found.skipped} failed the token check)",
            field="corpus",
        )
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    batch = found.batch(n_ctx=n_ctx)
    result = evaluate_batch(model, batch, batch_size=batch_size)
    losses = torch.tensor(result.pop("loss_per_prompt"))
    out = {
        "task": task,
        "natural": True,
        "seed": seed,
        "files": found.files,
        "found": found.found,
        "skipped": found.skipped,
        "answers": list(found.answers),
        **result,
    }
    for side, key in ((0, "a"), (1, "b")):  # per true answer: a model may just favour one
        mask = batch.label == side
        out[f"n_{key}"] = int(mask.sum())
        out[f"loss_{key}"] = float(losses[mask].mean()) if mask.any() else None
        # softplus(wrong - correct) < log 2 exactly when the correct logit is larger
        out[f"accuracy_{key}"] = (
            float((losses[mask] < math.log(2)).float().mean()) if mask.any() else None
        )
    return out
