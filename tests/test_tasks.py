"""The 20 circuit tasks as data: task files, pair generation, splits, batches, loss, CLI, natural code."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from sparse_lens.cli import build_parser, main
from sparse_lens.errors import SparseLensError
from sparse_lens.tasks import (
    BUILTIN_TASKS_DIR,
    SPLITS,
    evaluate_task,
    generate_pairs,
    get_task,
    load_task,
    load_tasks,
    make_batch,
    mine_natural,
    task_loss,
    task_names,
)

PAPER_TASKS = {
    "single_double_quote", "final_kwarg", "set_or_string", "set_or_string_fixedvarname",
    "class_init", "with_as", "bracket_brace", "with_open", "bracket_counting", "for_while",
    "else_elif", "fstring_brace", "if_ternary", "var_swap", "indent_for", "lambda_func",
    "if_equals", "enumerate_range", "var_if", "while_return_true",
}  # fmt: skip

# The scored tokens (decoded) each task must produce under the stdlib tokenizer; a set lists
# every form the task may score (e.g. quoted vs bare keys). Unlisted tasks score per-pair tokens.
SCORED = {
    "single_double_quote": {('")', "')")},
    "bracket_counting": {("]", "]]")},
    "set_or_string": {(".", " +=")},
    "set_or_string_fixedvarname": {(".", " +=")},
    "for_while": {(" in", ":")},
    "if_equals": {(" ==", " =")},
    "lambda_func": {(":", "(")},
    "final_kwarg": {("=", "):")},
    "if_ternary": {(" else", ":")},
    "with_open": {("r", "w")},
    "enumerate_range": {(" en", " range"), (" enumerate", " range")},
    "bracket_brace": {(":", ","), ('":', '",'), ("':", "',")},
    "fstring_brace": {(" {", '")'), (" {", "')")},
}

N_PAIRS = 500
REPO_TASKS = Path(__file__).resolve().parents[1] / "tasks"


@pytest.fixture(scope="module")
def tok():
    from sparse_lens.data.tokenizer import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="module")
def tiny(tok):
    from sparse_lens import SparseConfig, SparseTransformer

    cfg = SparseConfig(
        n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=128, n_ctx=128, d_vocab=2048
    )
    return SparseTransformer(cfg, tokenizer=tok, seed=0).eval()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny.save_pretrained(path)
    return path


def _outside(text: str, spans) -> list[str]:
    out, last = [], 0
    for start, end in sorted(spans):
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return out


# ------------------------------------------------------------------------------------------
# The shipped task files


def test_the_twenty_task_files_live_in_the_top_level_tasks_folder():
    assert {p.stem for p in REPO_TASKS.glob("*.toml")} == PAPER_TASKS
    assert (REPO_TASKS / "README.md").is_file()
    assert BUILTIN_TASKS_DIR == REPO_TASKS  # a checkout reads tasks/ itself
    assert not (REPO_TASKS.parent / "sparse_lens" / "tasks" / "defs").exists()


def test_all_twenty_paper_tasks_ship():
    assert set(task_names()) == PAPER_TASKS
    tasks = load_tasks()
    for name, task in tasks.items():
        assert task.name == name and task.description and "\n" not in task.description
        assert task.differs, name  # every file declares where its pairs differ


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_task_pairs(name, tok):
    task = get_task(name)
    pairs = generate_pairs(task, N_PAIRS, seed=0, split="train", tokenizer=tok)
    assert len(pairs) == N_PAIRS
    assert len({(p.a.text, p.b.text) for p in pairs.pairs}) == N_PAIRS  # distinct pairs
    assert len({p.text for p in pairs.prompts()}) == 2 * N_PAIRS  # even distinct prompts

    for i, pair in enumerate(pairs.pairs):
        a, b = pair.a, pair.b
        assert (a.label, b.label) == (0, 1)
        assert a.text != b.text
        # the prompts differ only inside the declared contrast slots' spans ...
        assert a.diff_spans and len(a.diff_spans) == len(b.diff_spans)
        assert _outside(a.text, a.diff_spans) == _outside(b.text, b.diff_spans)
        # ... which a plain character diff confirms: the two texts agree on everything before
        # the first contrast span and after the last (their hull, for several contrast slots)
        same_head = len(os.path.commonprefix([a.text, b.text]))
        same_tail = len(os.path.commonprefix([a.text[::-1], b.text[::-1]]))
        for prompt in (a, b):
            start = min(s for s, _ in prompt.diff_spans)
            end = max(e for _, e in prompt.diff_spans)
            assert start <= same_head and len(prompt.text) - end <= same_tail, (a.text, b.text)
        # the scored tokens: distinct first tokens of the two answers at a token boundary
        for prompt in (a, b):
            assert prompt.answer_ids[0] != prompt.answer_ids[1]
            if i < 50:
                assert tuple(tok.encode(prompt.text).ids) == prompt.tokens
                for answer, scored in zip(
                    (pair.answer_a, pair.answer_b), prompt.answer_ids, strict=True
                ):
                    full = tok.encode(prompt.text + answer).ids
                    assert tuple(full[: len(prompt.tokens)]) == prompt.tokens
                    assert full[len(prompt.tokens)] == scored
        # each answer's scored token is a single token that starts the answer text
        for answer, scored in zip((pair.answer_a, pair.answer_b), a.answer_ids, strict=True):
            piece = tok.decode([scored])
            assert piece and answer.startswith(piece)
    if name in SCORED:
        seen = {tuple(tok.decode([t]) for t in p.answer_ids) for p in pairs.prompts()}
        assert seen <= SCORED[name], seen
    if name in ("class_init", "var_swap"):  # names chosen so the whole answer is one token
        for pair in pairs.pairs:
            assert tok.decode([pair.a.answer_ids[0]]) == pair.answer_a.split(" =")[0]
    print(f"{name}: {len(pairs)} pairs, {pairs.stats}")


def test_single_double_quote_differs_only_in_the_opening_quote(tok):
    pairs = generate_pairs(get_task("single_double_quote"), 200, seed=3, tokenizer=tok)
    for pair in pairs.pairs:
        (sa, ea), (sb, eb) = pair.a.diff_spans[0], pair.b.diff_spans[0]
        assert pair.a.text[sa:ea] == '"' and pair.b.text[sb:eb] == "'"
        assert pair.a.text[:sa].endswith("(")
        assert pair.a.text.replace('"', "'") == pair.b.text.replace('"', "'")


def test_bracket_counting_same_numbers_depth_one_vs_two(tok):
    for pair in generate_pairs(get_task("bracket_counting"), 100, seed=1, tokenizer=tok).pairs:
        assert pair.b.text.replace("[[", "[") == pair.a.text
        assert tok.decode(list(pair.a.answer_ids)) == "]]]"  # `]` then `]]`: one token each


def test_splits_are_deterministic_and_disjoint(tok):
    task = get_task("var_swap")
    prompts = {}
    for split, n in zip(SPLITS, (300, 60, 60), strict=True):
        got = generate_pairs(task, n, seed=7, split=split, tokenizer=tok)
        prompts[split] = {p.text for p in got.prompts()}
        again = generate_pairs(task, n, seed=7, split=split, tokenizer=tok)
        assert [p.a.text for p in got.pairs] == [p.a.text for p in again.pairs]
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    # the seed chooses the sample, not the split; a shorter run is a prefix of a longer one
    other = {
        p.text for p in generate_pairs(task, 60, seed=8, split="test", tokenizer=tok).prompts()
    }
    assert other != prompts["test"]
    assert not other & prompts["train"] and not other & prompts["validation"]
    short = generate_pairs(task, 20, seed=7, split="validation", tokenizer=tok)
    long = generate_pairs(task, 60, seed=7, split="validation", tokenizer=tok)
    assert [p.a.text for p in short.pairs] == [p.a.text for p in long.pairs[:20]]


def test_splits_disjoint_for_every_task(tok):
    for name, task in load_tasks().items():
        seen: dict[str, str] = {}
        for split, n in zip(SPLITS, (150, 40, 40), strict=True):
            for prompt in generate_pairs(task, n, seed=1, split=split, tokenizer=tok).prompts():
                assert seen.setdefault(prompt.text, split) == split, (name, prompt.text)


def test_unknown_split_and_exhausted_task(tok, tmp_path):
    with pytest.raises(SparseLensError, match="unknown split"):
        generate_pairs(get_task("var_if"), 2, split="dev", tokenizer=tok)
    path = tmp_path / "tiny_task.toml"
    path.write_text(TINY_TASK, encoding="utf-8")
    with pytest.raises(SparseLensError, match="tiny_task") as info:
        generate_pairs(load_task(path), 500, tokenizer=tok)
    assert info.value.path == str(path)


def test_pairs_failing_the_token_check_are_regenerated_and_counted(tmp_path, tok):
    # a message ending in a space merges with the closing quote (` "`): no token boundary
    text = TINY_TASK.replace(
        'text = ["hello", "bye"]', 'text = ["hello", "bye ", "see you ", "ok"]'
    )
    text = text.replace('call = ["print", "log"]', 'call = ["print", "log", "echo", "warn", "say"]')
    path = tmp_path / "tiny_task.toml"
    path.write_text(text, encoding="utf-8")
    pairs = generate_pairs(load_task(path), 4, tokenizer=tok)
    assert len(pairs) == 4 and pairs.stats.regenerated > 0
    assert all(not p.text.endswith(" ") for p in pairs.prompts())


# ------------------------------------------------------------------------------------------
# Malformed task files

TINY_TASK = """\
name = "tiny_task"
description = "A user task: quote style in a call."
answer_a = '")'
answer_b = "')"
templates = ['''{call}({quote}{text}''']

[contrast.quote]
a = ['"']
b = ["'"]

[slots]
call = ["print", "log"]
text = ["hello", "bye"]
"""

MALFORMED = [
    # (description, edit of TINY_TASK, field, line or None, message fragment)
    ("toml syntax", lambda s: s.replace('call = ["print", "log"]', 'call = ["print", "log"'), None, 13, "invalid TOML"),
    ("missing field", lambda s: s.replace('description = "A user task: quote style in a call."\n', ""), "description", None, "missing"),
    ("unknown slot", lambda s: s.replace("{text}", "{txt}"), "templates[0]", 5, "unknown slot {txt}"),
    ("wrong type", lambda s: s.replace('text = ["hello", "bye"]', "text = [1, 2]"), "slots.text[0]", 13, "must be a string"),
    ("name mismatch", lambda s: s.replace('name = "tiny_task"', 'name = "other_task"'), "name", 1, "must match the file name"),
    ("unknown field", lambda s: s.replace("[contrast.quote]", 'answer_c = "x"\n\n[contrast.quote]'), "answer_c", 7, "unknown field"),
    ("no contrast", lambda s: s.replace("[contrast.quote]\na = ['\"']\nb = [\"'\"]\n", ""), "contrast", None, "declare where a pair differs"),
    ("bad contrast", lambda s: s.replace("b = [\"'\"]", "c = [\"'\"]"), "contrast.quote", 7, "exactly `a` and `b`"),
    ("cycle", lambda s: s.replace('text = ["hello", "bye"]', 'text = ["{more}"]\nmore = ["{text}"]'), "slots.more", 14, "cycle"),
    ("bad brace", lambda s: s.replace('"bye"', '"b{ye"'), "slots.text[1]", 13, "unclosed"),
    ("key after table", lambda s: s + 'distinct = [["call", "text"]]\n', "slots.distinct", 14, "top-level keys must come before"),
    ("empty templates", lambda s: s.replace("templates = ['''{call}({quote}{text}''']", "templates = []"), "templates", 5, "non-empty array"),
]  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_task_file_names_file_field_and_line(case, tmp_path):
    _, edit, field, line, fragment = case
    path = tmp_path / "tiny_task.toml"
    path.write_text(edit(TINY_TASK), encoding="utf-8")
    with pytest.raises(SparseLensError) as info:
        load_task(path)
    error = info.value
    assert error.path == str(path)
    assert str(path) in str(error)
    assert fragment in str(error)
    assert error.field == field
    if field is not None:
        assert f"field '{field}'" in str(error)
    if line is not None:
        assert f"line {line}" in str(error)


CLI_MALFORMED = [
    # (edit of TINY_TASK, what the one line must name besides the file)
    (lambda s: s.replace("{text}", "{txt}"), ["templates[0]", "txt"]),
    (lambda s: s.replace('call = ["print", "log"]', 'call = ["print", "log"'), ["invalid TOML", "line 13"]),
    (lambda s: s.replace("answer_b = \"')\"\n", ""), ["field 'answer_b'", "missing"]),
    (lambda s: s.replace('description = "A user task: quote style in a call."', "description = 3"), ["field 'description'", "expected a string"]),
    (lambda s: s.replace("templates = ['''{call}({quote}{text}''']", "templates = '{call}({quote}{text}'"), ["field 'templates'", "expected a list"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "edit, names", CLI_MALFORMED, ids=["slot", "toml", "missing", "type", "list"]
)
def test_cli_reports_malformed_task_in_one_line(edit, names, tmp_path, capsys):
    path = tmp_path / "tiny_task.toml"
    path.write_text(edit(TINY_TASK), encoding="utf-8")
    assert main(["tasks", "list", "--tasks-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err
    for name in names:
        assert name in err, err


def _user_tasks(folder: Path, text: str = TINY_TASK) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_task.toml").write_text(text, encoding="utf-8")
    return folder


def test_user_tasks_dir_adds_tasks(tmp_path, tok, capsys):
    _user_tasks(tmp_path)
    assert set(task_names(tmp_path)) == PAPER_TASKS | {"tiny_task"}
    assert set(load_tasks(str(tmp_path))) == PAPER_TASKS | {"tiny_task"}
    pairs = generate_pairs(get_task("tiny_task", tmp_path), 1, tokenizer=tok)
    assert len(pairs) == 1
    assert main(["tasks", "list", "--tasks-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny_task" in out and "21 tasks" in out
    assert main(["tasks", "show", "tiny_task", "--n", "2", "--tasks-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny_task: A user task") and out.count("=== pair") == 2
    with pytest.raises(SparseLensError, match="unknown task"):
        get_task("tiny_task")
    with pytest.raises(SparseLensError, match="does not exist"):
        task_names(tmp_path / "missing")


def test_several_user_task_folders(tmp_path):
    first = _user_tasks(tmp_path / "a")
    second = _user_tasks(tmp_path / "b", TINY_TASK.replace('"tiny_task"', '"other_task"'))
    (second / "tiny_task.toml").rename(second / "other_task.toml")
    assert set(task_names([first, str(second)])) == PAPER_TASKS | {"tiny_task", "other_task"}
    assert get_task("other_task", (first, second)).path == str(second / "other_task.toml")
    # the built-in folder itself, or one folder twice, is no clash
    assert set(task_names([BUILTIN_TASKS_DIR, first, first])) == PAPER_TASKS | {"tiny_task"}


def test_a_task_defined_twice_is_one_error_naming_both_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(BUILTIN_TASKS_DIR / "var_if.toml", mine / "var_if.toml")
    with pytest.raises(SparseLensError, match="defined twice") as info:
        task_names(mine)
    assert str(mine / "var_if.toml") in str(info.value)
    assert str(BUILTIN_TASKS_DIR / "var_if.toml") in str(info.value)
    assert main(["tasks", "show", "var_if", "--tasks-dir", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "defined twice" in err
    assert str(mine / "var_if.toml") in err and str(BUILTIN_TASKS_DIR / "var_if.toml") in err
    out = str(tmp_path / "out.html")
    for command in (  # the folder reaches each command's task lookup, which comes before any work
        ["demo", "--task", "var_if", "--out", out],
        ["report", "stdlib-sparse", "--task", "var_if", "--out", out],
        ["compare", "stdlib-sparse", "stdlib-dense", "--tasks", "var_if"],
        ["eval", "stdlib-sparse", "--task", "var_if"],
    ):
        assert main([*command, "--tasks-dir", str(mine)]) == 2, command
        assert "defined twice" in capsys.readouterr().err
    assert not Path(out).exists()

    first, second = _user_tasks(tmp_path / "a"), _user_tasks(tmp_path / "b")
    with pytest.raises(SparseLensError) as info:
        get_task("tiny_task", [first, second])
    assert str(first / "tiny_task.toml") in str(info.value)
    assert str(second / "tiny_task.toml") in str(info.value)


def test_every_subcommand_that_takes_a_task_takes_tasks_dir():
    def subcommands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield prefix + (name,), sub
                    yield from subcommands(sub, prefix + (name,))

    with_task = set()
    for path, sub in subcommands(build_parser()):
        options = {o for a in sub._actions for o in a.option_strings}
        if options & {"--task", "--tasks"} or path in {("tasks", "show"), ("validate",)}:
            with_task.add(" ".join(path))
            assert "--tasks-dir" in options, path
    assert {"demo", "report", "prune", "validate", "eval", "compare", "tasks show"} <= with_task


def test_user_task_evaluated_through_the_api_and_cli(tmp_path, capsys):
    from sparse_lens import SparseTransformer

    folder = _user_tasks(tmp_path / "mine")
    model = SparseTransformer.from_pretrained("stdlib-sparse")
    # the tiny task's four pairs all fall in the train split
    result = evaluate_task(model, "tiny_task", n_pairs=2, split="train", tasks_dir=[folder])
    assert result["task"] == "tiny_task" and result["n_prompts"] == 4
    args = ["eval", "stdlib-sparse", "--task", "tiny_task", "--tasks-dir", str(folder)]
    assert main([*args, "--n-pairs", "2", "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "tiny_task" in out and f"{result['loss']:.4f}" in out


# ------------------------------------------------------------------------------------------
# Batches and the task loss


def test_task_loss_matches_two_way_cross_entropy(tok):
    pairs = generate_pairs(get_task("single_double_quote"), 3, seed=0, tokenizer=tok)
    batch = make_batch(pairs)
    assert batch.tokens.shape[0] == 6 and batch.pair_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.label.tolist() == [0, 1, 0, 1, 0, 1]
    logits = torch.randn(6, batch.tokens.shape[1], 2048, generator=torch.Generator().manual_seed(0))
    loss, acc = task_loss(logits, batch, reduction="none")
    last = logits[torch.arange(6), batch.last_pos]
    for row in range(6):
        two = last[row, batch.answer_ids[row]]
        expected = -torch.log_softmax(two, -1)[batch.label[row]]
        assert torch.isclose(loss[row], expected, atol=1e-6)
        assert acc[row] == float(two[batch.label[row]] > two[1 - batch.label[row]])
    mean_loss, mean_acc = task_loss(last, batch)  # logits already at the last position
    assert torch.isclose(mean_loss, loss.mean()) and torch.isclose(mean_acc, acc.mean())
    # equal logits: log 2 per prompt, half the paper's per-pair sum of 2 log 2
    flat, _ = task_loss(torch.zeros(6, 2048), batch)
    assert math.isclose(float(flat), math.log(2), rel_tol=1e-6)


def test_right_padding_is_exact_for_a_causal_model(tiny, tok):
    pairs = generate_pairs(get_task("indent_for"), 4, seed=2, tokenizer=tok)
    batch = make_batch(pairs, n_ctx=tiny.cfg.n_ctx)
    assert len(set(batch.last_pos.tolist())) > 1  # prompts of different lengths
    with torch.no_grad():
        logits = tiny(batch.tokens, return_type="logits")
        for row, prompt in enumerate(pairs.prompts()):
            alone = tiny(torch.tensor([prompt.tokens]), return_type="logits")[0, -1]
            assert torch.allclose(logits[row, batch.last_pos[row]], alone, atol=1e-5)
    assert batch.mask.sum(1).tolist() == [len(p.tokens) for p in pairs.prompts()]


def test_left_truncation_keeps_the_last_token(tok):
    pairs = generate_pairs(get_task("set_or_string_fixedvarname"), 2, tokenizer=tok)
    batch = make_batch(pairs, n_ctx=8)
    assert batch.tokens.shape[1] == 8
    for row, prompt in enumerate(pairs.prompts()):
        assert batch.tokens[row].tolist() == list(prompt.tokens[-8:])
        assert int(batch.last_pos[row]) == 7


def test_evaluate_task_on_an_untrained_model(tiny):
    result = evaluate_task(tiny, "for_while", n_pairs=8, seed=0, split="test")
    assert result["task"] == "for_while" and result["n_pairs"] == 8 and result["n_prompts"] == 16
    assert 0.3 < result["loss"] < 1.5 and 0 <= result["accuracy"] <= 1
    assert math.isclose(result["loss_per_pair"], 2 * result["loss"])


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_eval_prints_all_twenty_tasks(tiny_dir, tmp_path, capsys):
    out_json = tmp_path / "eval.json"
    code = main(["eval", str(tiny_dir), "--n-pairs", "4", "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    for name in PAPER_TASKS:
        assert name in out
    data = json.loads(out_json.read_text())
    assert {r["task"] for r in data["tasks"]} == PAPER_TASKS
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in data["tasks"])


def test_cli_tasks_show_with_model(tiny_dir, capsys):
    assert main(["tasks", "show", "single_double_quote", "--n", "2", "--model", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("=== pair") == 2
    assert "P(A|A,B)" in out and '«"»' in out and "«'»" in out
    assert main(["tasks", "show", "no_such_task"]) == 2


# ------------------------------------------------------------------------------------------
# Natural code

CORPUS = textwrap.dedent(
    """\
    import sys


    def main(argv):
        print("starting the job")
        name = argv.get('user name')
        grid = [[1, 2], [3, 4]]
        row = [5, 6, 7]
        pairs = [[10, 20], [30, 40]]
        data = [D('1.5'), D('2.5')]
        print(f"no {name}")
        return sorted(row, key=abs)
    """
)


def test_mine_natural_finds_real_quotes_and_brackets(tmp_path, tok):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "job.py").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "broken.py").write_text("def broken(:\n", encoding="utf-8")

    quotes = mine_natural("single_double_quote", tmp_path, tok)
    got = {(i.prompt.text.rsplit("\n", 1)[-1], i.prompt.label) for i in quotes.instances}
    assert got == {
        ('    print("starting the job', 0),
        ("    name = argv.get('user name", 1),
        ("    data = [D('1.5", 1),
        ("    data = [D('1.5'), D('2.5", 1),
    }  # the f-string is skipped
    assert all(i.line >= 5 and i.path.endswith("job.py") for i in quotes.instances)

    brackets = mine_natural("bracket_counting", tmp_path, tok)
    got = {(i.prompt.text.rsplit("\n", 1)[-1], i.prompt.label) for i in brackets.instances}
    assert got == {
        ("    grid = [[1, 2], [3, 4", 1),
        ("    row = [5, 6, 7", 0),
        ("    pairs = [[10, 20], [30, 40", 1),
    }
    for inst in brackets.instances:
        assert [tok.decode([t]) for t in inst.prompt.answer_ids] == ["]", "]]"]

    with pytest.raises(SparseLensError, match="no natural-code miner"):
        mine_natural("for_while", tmp_path, tok)


def test_cli_eval_natural(tiny_dir, tmp_path, capsys):
    (tmp_path / "job.py").write_text(CORPUS, encoding="utf-8")
    code = main(
        ["eval", str(tiny_dir), "--natural", "single_double_quote", "--corpus", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "4 instances" in out and "all" in out
