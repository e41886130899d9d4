"""Expand a task's templates into tokenised contrast pairs, split deterministically.

How a pair is drawn: one template, one value per shared slot, and for every contrast slot a
value for side A and one for side B (all from a ``random.Random`` seeded by ``seed``). Both
sides are rendered with the same shared values, so the prompts differ only inside the spans of
the contrast slots, which are recorded on each :class:`Prompt` (``diff_spans``).

Splits. A pair's split is a pure function of its content, never of the seed: the hash of the
prompt text with every contrast span blanked out (both prompts of a pair, and every pair that
shares a prompt with it, have that same masked text). So no prompt is in two splits, and test
prompts stay out of training whatever seeds pruning and evaluation use. The seed only chooses
which pairs of the split are drawn and in which order; the first ``n`` pairs of a longer run
with the same seed are the ``n`` pairs of a shorter one.

Scored tokens. The loader tokenises ``prompt`` and ``prompt + answer`` for both answers; the
prompt's tokens must be a prefix (the prompt ends on a token boundary in that context), and the
token right after them is the answer's scored token. The two answers' scored tokens must differ.
A pair failing this on either prompt is dropped and drawn again, and counted in
``PairSet.stats.regenerated``. Within one set every prompt text is distinct.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparse_lens.errors import SparseLensError
from sparse_lens.tasks.spec import Task, Template

__all__ = [
    "SPLITS",
    "GenerationStats",
    "Pair",
    "PairSet",
    "Prompt",
    "generate_pairs",
    "score_prompt",
    "split_of",
]

SPLITS = ("train", "validation", "test")
_SPLIT_EDGES = (0.8, 0.9, 1.0)  # train 80 %, validation 10 %, test 10 % of the pair space
_MASK = "\x00"
_MAX_STALE = 2000  # give up after this many draws in a row without a new pair


@dataclass(frozen=True)
class Prompt:
    """One prompt of a task, tokenised, with its two scored answer tokens.

    ``answer_ids`` = (scored token of answer A, scored token of answer B), both computed in this
    prompt's context; ``label`` says which is right here (0: A, 1: B).
    """

    text: str
    tokens: tuple[int, ...]
    answer_ids: tuple[int, int]
    label: int
    diff_spans: tuple[tuple[int, int], ...] = ()

    @property
    def correct_id(self) -> int:
        return self.answer_ids[self.label]

    @property
    def wrong_id(self) -> int:
        return self.answer_ids[1 - self.label]


@dataclass(frozen=True)
class Pair:
    """Two prompts differing only inside their ``diff_spans``; A is right on ``a``, B on ``b``."""

    a: Prompt
    b: Prompt
    answer_a: str
    answer_b: str
    template: int


@dataclass
class GenerationStats:
    drawn: int = 0  # candidates drawn from the RNG
    other_split: int = 0  # belonged to another split
    duplicate: int = 0  # repeated a prompt already in the set
    rejected: int = 0  # violated a `distinct` group or rendered identical prompts
    regenerated: int = 0  # failed the token-boundary / distinct-first-token check


@dataclass
class PairSet:
    """``n`` pairs of one task and split; ``prompts()`` interleaves them as a0, b0, a1, b1, ..."""

    task: str
    split: str
    seed: int
    pairs: list[Pair]
    stats: GenerationStats = field(default_factory=GenerationStats)
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def prompts(self) -> list[Prompt]:
        return [p for pair in self.pairs for p in (pair.a, pair.b)]

    def batch(self, n_ctx: int | None = None):
        """The pairs as a :class:`~sparse_lens.tasks.batch.TaskBatch` (needs torch)."""
        from sparse_lens.tasks.batch import make_batch

        return make_batch(self, n_ctx=n_ctx)


# --------------------------------------------------------------------------------------------
# Rendering


def _expand(
    task: Task, choice: dict[str, int | tuple[int, int]], side: int, template: Template
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``template`` for one side of a pair, with the span of every contrast-slot use.

    Iterative (an explicit stack, one call per render): this runs for every draw, and under the
    test suite's type-checking import hook every Python call and nested def is costly.
    """
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    stack: list[tuple[Template, int, int]] = [
        (template, 0, -1)
    ]  # (template, next part, span start)
    while stack:
        parts, i, start = stack.pop()
        if i == len(parts):
            if start >= 0:
                spans.append((start, pos))
            continue
        stack.append((parts, i + 1, start))
        is_slot, value = parts[i]
        if not is_slot:
            out.append(value)
            pos += len(value)
        elif value in task.contrast:
            c = task.contrast[value]
            stack.append(((c.b if side else c.a)[choice[value][side]], 0, pos))  # type: ignore[index]
        else:
            stack.append((task.slots[value][choice[value]], 0, -1))  # type: ignore[index]
    return "".join(out), sorted(spans)


def _mask(text: str, spans: Sequence[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in sorted(spans):
        out.append(text[last:start])
        out.append(_MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


def split_of(masked_text: str) -> str:
    """The split a pair belongs to, from its masked prompt text (see the module docstring)."""
    digest = hashlib.blake2b(masked_text.encode("utf-8"), digest_size=8, person=b"sl-task-split")
    u = int.from_bytes(digest.digest(), "big") / 2**64
    for name, edge in zip(SPLITS, _SPLIT_EDGES, strict=True):
        if u < edge:
            return name
    return SPLITS[-1]


@dataclass
class _Candidate:
    template: int
    texts: tuple[str, str]
    spans: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
    answers: tuple[str, str]


def _draw(task: Task, rng: random.Random) -> tuple[_Candidate | None, str | None]:
    """One candidate pair, or None when it breaks a `distinct` group / renders identically."""
    t = rng.randrange(len(task.templates))
    choice: dict[str, int | tuple[int, int]] = {}
    for s, values in task.slots.items():  # declaration order; a group's leader comes first
        leader = task.links.get(s, s)
        choice[s] = choice[leader] if leader != s else rng.randrange(len(values))
    for name, c in task.contrast.items():
        choice[name] = (rng.randrange(len(c.a)), rng.randrange(len(c.b)))
    rendered = [_expand(task, choice, side, task.templates[t]) for side in (0, 1)]
    if rendered[0][0] == rendered[1][0]:
        return None, None
    for group in task.distinct:
        for side in (0, 1):
            values = [_expand(task, choice, side, ((True, slot),))[0] for slot in group]
            if len(set(values)) != len(values):
                return None, None
    masked = [_mask(text, spans) for text, spans in rendered]
    if masked[0] != masked[1]:  # a shared slot rendered differently on the two sides: a bug
        raise AssertionError(f"task {task.name}: prompts differ outside contrast spans")
    answers = (
        _expand(task, choice, 0, task.answer_a)[0],
        _expand(task, choice, 1, task.answer_b)[0],
    )
    return (
        _Candidate(
            template=t,
            texts=(rendered[0][0], rendered[1][0]),
            spans=(tuple(rendered[0][1]), tuple(rendered[1][1])),
            answers=answers,
        ),
        masked[0],
    )


# --------------------------------------------------------------------------------------------
# Tokenising and checking


def score_prompt(
    tokenizer, text: str, answers: tuple[str, str]
) -> tuple[tuple[int, ...], tuple[int, int]] | None:
    """Tokenise ``text``; return (tokens, scored first token of each answer) or None.

    None when the prompt does not end on a token boundary before one of the answers, or when
    both answers start with the same token.
    """
    return _score_batch(tokenizer, [(text, answers)])[0]


_TAIL = 12  # tokens of context re-encoded with each answer


def _score_batch(tokenizer, items: list[tuple[str, tuple[str, str]]]) -> list:
    """:func:`score_prompt` for many prompts, re-encoding only each prompt's tail.

    Appending an answer can only change the prompt's last pre-tokens, so it is enough to encode
    the last ``_TAIL`` tokens' text with each answer. The shortcut is verified (the tail alone
    must encode to the prompt's last tokens); where it is not, the whole prompt is used.
    """
    full = [e.ids for e in tokenizer.encode_batch([text for text, _ in items])]
    tails = []
    for (text, _), ids in zip(items, full, strict=True):
        tail = text
        if len(ids) > _TAIL:
            decoded = tokenizer.decode(ids[-_TAIL:])
            if decoded and text.endswith(decoded):
                tail = decoded
        tails.append(tail)
    texts = []
    for tail, (_, answers) in zip(tails, items, strict=True):
        texts += [tail, tail + answers[0], tail + answers[1]]
    enc = [e.ids for e in tokenizer.encode_batch(texts)]
    out = []
    for i, ((text, answers), ids, tail) in enumerate(zip(items, full, tails, strict=True)):
        tail_ids, with_a, with_b = enc[3 * i : 3 * i + 3]
        if tail != text and tail_ids != ids[len(ids) - len(tail_ids) :]:
            with_a, with_b = (
                e.ids for e in tokenizer.encode_batch([text + answers[0], text + answers[1]])
            )
            tail_ids = ids
        checked = _check([tail_ids, with_a, with_b])
        out.append(None if checked is None else (tuple(ids), checked[1]))
    return out


def _check(ids: list[list[int]]) -> tuple[tuple[int, ...], tuple[int, int]] | None:
    prompt, with_a, with_b = ids
    n = len(prompt)
    if n == 0:
        return None
    firsts = []
    for full in (with_a, with_b):
        if len(full) <= n or full[:n] != prompt:
            return None
        firsts.append(full[n])
    if firsts[0] == firsts[1]:
        return None
    return tuple(prompt), (firsts[0], firsts[1])


def _tokenise(tokenizer, cands: list[_Candidate]) -> list[Pair | None]:
    items = [(c.texts[side], c.answers) for c in cands for side in (0, 1)]
    scored = _score_batch(tokenizer, items)
    out: list[Pair | None] = []
    for i, c in enumerate(cands):
        sides = scored[2 * i : 2 * i + 2]
        if sides[0] is None or sides[1] is None:
            out.append(None)
            continue
        a, b = (
            Prompt(c.texts[side], tokens, answer_ids, side, c.spans[side])
            for side, (tokens, answer_ids) in enumerate(sides)
        )
        out.append(Pair(a, b, c.answers[0], c.answers[1], c.template))
    return out


def _pad_id(tokenizer) -> int:
    eot = tokenizer.token_to_id("<|endoftext|>")
    return int(eot) if eot is not None else 0


def _default_tokenizer():
    from sparse_lens.data.tokenizer import default_tokenizer

    return default_tokenizer()


def generate_pairs(
    task: Task,
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    tokenizer=None,
) -> PairSet:
    """Draw ``n`` distinct, tokenised contrast pairs of ``task`` from ``split``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (default: the stdlib tokenizer,
    :func:`sparse_lens.data.tokenizer.default_tokenizer`); use the model's own. Raises
    SparseLensError when the task cannot supply ``n`` distinct pairs in this split (the task
    file needs more templates or slot values): after ``_MAX_STALE`` draws in a row that give
    nothing new.
    """
    if split not in SPLITS:
        raise SparseLensError(
            f"unknown split {split!r}; choose one of {', '.join(SPLITS)}", field="split"
        )
    if n < 0:
        raise SparseLensError(f"number of pairs must be >= 0, got {n}", field="n")
    if tokenizer is None:
        tokenizer = _default_tokenizer()
    rng = random.Random(f"sparse-lens/{task.name}/{seed}")
    stats = GenerationStats()
    pairs: list[Pair] = []
    used: set[str] = set()
    stale = 0  # draws since the last new candidate
    while len(pairs) < n:
        want = n - len(pairs)
        cands: list[_Candidate] = []
        while len(cands) < want + 8 and stale < _MAX_STALE:
            stats.drawn += 1
            stale += 1
            cand, masked = _draw(task, rng)
            if cand is None:
                stats.rejected += 1
                continue
            if split_of(masked) != split:
                stats.other_split += 1
                continue
            if cand.texts[0] in used or cand.texts[1] in used:
                stats.duplicate += 1
                continue
            used.update(cand.texts)
            cands.append(cand)
            stale = 0
        if not cands:
            raise SparseLensError(
                f"task {task.name!r} gave only {len(pairs)} of {n} distinct {split} pairs "
                f"({stats.drawn} draws: {stats.duplicate} duplicates, {stats.other_split} in other "
                f"splits, {stats.regenerated} failed the token check); add templates or slot values",
                path=task.path,
            )
        for pair in _tokenise(tokenizer, cands):
            if pair is None:
                stats.regenerated += 1
            elif len(pairs) < n:
                pairs.append(pair)
    return PairSet(task.name, split, seed, pairs, stats, _pad_id(tokenizer))
