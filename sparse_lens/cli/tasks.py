"""`sparse-lens tasks list|show` and `sparse-lens eval`: look at the circuit tasks, score a model.

``tasks list`` prints each task's answers and where its pairs differ. ``tasks show NAME``
prints generated pairs with the contrast region marked «like this» and, given ``--model``, the
scored tokens and the model's probabilities. ``eval MODEL`` prints the task loss (mean binary
cross-entropy per prompt over the two answers: half the paper's per-pair sum) and accuracy of
every task, or, with ``--natural TASK --corpus PATH``, of instances mined from real code.
"""

from __future__ import annotations

import argparse
import sys

from sparse_lens.cli.options import add_tasks_dir
from sparse_lens.defaults import N_PAIRS


def register(subparsers: argparse._SubParsersAction) -> None:
    tasks = subparsers.add_parser(
        "tasks",
        help="list the circuit tasks or show generated pairs",
        description="The circuit tasks: binary next-token choices defined by TOML files.",
    )
    sub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="{list,show}")

    lister = sub.add_parser("list", help="list the tasks", description="List every task.")
    add_tasks_dir(lister)
    lister.set_defaults(func=run_list)

    show = sub.add_parser(
        "show",
        help="print generated pairs of one task",
        description="Print contrast pairs of a task (the differing region marked «...»); with "
        "--model, also the scored tokens' probabilities under the model.",
    )
    show.add_argument("name", help="task name (see `sparse-lens tasks list`)")
    show.add_argument("--n", type=int, default=5, help="number of pairs (default 5)")
    show.add_argument("--model", help="a model directory: show its probabilities")
    add_tasks_dir(show)
    show.add_argument("--seed", type=int, default=0, help="which pairs to draw (default 0)")
    show.add_argument("--split", default="train", help="train, validation or test (default train)")
    show.set_defaults(func=run_show)

    ev = subparsers.add_parser(
        "eval",
        help="task loss and accuracy of a model",
        description="Evaluate a model on the circuit tasks: mean binary cross-entropy over the "
        "two answers at the last position (per prompt; the paper's per-pair loss is twice this) "
        "and accuracy. With --natural, on instances mined from real code instead.",
    )
    ev.add_argument(
        "model", help="a model directory (config.json + model.safetensors) or shipped name"
    )
    ev.add_argument("--task", default="all", help="a task name or 'all' (default all)")
    ev.add_argument(
        "--n-pairs", type=int, default=N_PAIRS, help=f"pairs per task (default {N_PAIRS})"
    )
    ev.add_argument("--seed", type=int, default=0, help="which pairs to draw (default 0)")
    ev.add_argument("--split", default="test", help="train, validation or test (default test)")
    add_tasks_dir(ev)
    ev.add_argument(
        "--batch-size", type=int, default=64, help="prompts per forward pass (default 64)"
    )
    ev.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ev.add_argument("--natural", metavar="TASK", help="evaluate on natural code for TASK instead")
    ev.add_argument("--corpus", help="with --natural: a .py file or a folder searched recursively")
    ev.add_argument("--max-instances", type=int, default=500, help="with --natural (default 500)")
    ev.set_defaults(func=run_eval, _parser=ev)


def run_list(args: argparse.Namespace) -> int:
    from sparse_lens.tasks import load_tasks

    tasks = load_tasks(args.tasks_dir)
    width = max(len(name) for name in tasks)
    print(f"{'task':<{width}}  {'differs in':<12} description")
    for name, task in tasks.items():
        print(f"{name:<{width}}  {', '.join(task.differs):<12} {task.description}")
    print(f"\n{len(tasks)} tasks")
    return 0


def _mark(text: str, spans) -> str:
    out, last = [], 0
    for start, end in sorted(spans):
        out += [text[last:start], "«", text[start:end], "»"]
        last = end
    out.append(text[last:])
    return "".join(out)


def run_show(args: argparse.Namespace) -> int:
    from sparse_lens.errors import SparseLensError
    from sparse_lens.tasks import generate_pairs, get_task

    if args.n < 1:
        raise SparseLensError(f"--n must be >= 1, got {args.n}", field="n")
    task = get_task(args.name, tasks_dir=args.tasks_dir)
    model = tokenizer = None
    if args.model:
        from sparse_lens.model import SparseTransformer

        model = SparseTransformer.from_pretrained(args.model)
        tokenizer = model.tokenizer
    if tokenizer is None:
        from sparse_lens.data.tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    pairs = generate_pairs(task, args.n, seed=args.seed, split=args.split, tokenizer=tokenizer)
    probs = _probabilities(model, pairs) if model is not None else None

    print(f"{task.name}: {task.description}")
    print(
        f"answers: A = {task.answer_a_text!r}, B = {task.answer_b_text!r}; pairs differ in "
        f"{', '.join(task.differs)} (marked «»); split {pairs.split}, seed {pairs.seed}"
    )
    if task.notes:
        print(task.notes)
    for i, pair in enumerate(pairs.pairs):
        print(f"\n=== pair {i + 1} (template {pair.template + 1})")
        for side, (prompt, answer) in enumerate(((pair.a, pair.answer_a), (pair.b, pair.answer_b))):
            a_tok, b_tok = (repr(tokenizer.decode([t])) for t in prompt.answer_ids)
            line = f"[{'AB'[side]}] right answer {answer!r}; scored tokens A {a_tok} vs B {b_tok}"
            if probs is not None:
                two_way, p_a, p_b = probs[2 * i + side]
                verdict = "right" if (two_way > 0.5) == (side == 0) else "wrong"
                line += (
                    f"; P(A|A,B) = {two_way:.3f} ({verdict}), p(A) = {p_a:.3g}, p(B) = {p_b:.3g}"
                )
            print(line)
            for text_line in _mark(prompt.text, prompt.diff_spans).split("\n"):
                print(f"    | {text_line}")
    stats = pairs.stats
    print(
        f"\n{len(pairs)} pairs from {stats.drawn} draws ({stats.regenerated} regenerated for "
        f"the token check, {stats.duplicate} duplicates, {stats.other_split} in other splits)"
    )
    return 0


def _probabilities(model, pairs) -> list[tuple[float, float, float]]:
    """Per prompt: P(A) over {A, B}, and the full-softmax probabilities of A and B."""
    import torch

    batch = pairs.batch(n_ctx=model.cfg.n_ctx)
    with torch.no_grad():
        model.eval()
        logits = model(batch.tokens, return_type="logits")
        last = logits[torch.arange(len(batch)), batch.last_pos].float()
        full = last.log_softmax(-1).gather(1, batch.answer_ids).exp()
        two = last.gather(1, batch.answer_ids).softmax(-1)[:, 0]
    return [(float(t), float(f[0]), float(f[1])) for t, f in zip(two, full, strict=True)]


def run_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sparse_lens.errors import SparseLensError
    from sparse_lens.model import SparseTransformer
    from sparse_lens.tasks import evaluate_natural, evaluate_task, get_task, task_names

    if args.corpus and not args.natural:
        args._parser.error("--corpus goes with --natural TASK")
    if args.n_pairs < 1:
        raise SparseLensError(f"--n-pairs must be >= 1, got {args.n_pairs}", field="n_pairs")
    model = SparseTransformer.from_pretrained(args.model)

    if args.natural:
        if not args.corpus:
            args._parser.error("--natural needs --corpus PATH")
        result = evaluate_natural(
            model,
            args.natural,
            args.corpus,
            max_instances=args.max_instances,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        print(
            f"natural {result['task']}: {result['n_prompts']} instances from {result['files']} files "
            f"({result['found']} found, {result['skipped']} failed the token check)"
        )
        print(f"{'answer':<10} {'n':>6} {'loss':>8} {'acc':>7}")
        for key, answer in zip("ab", result["answers"], strict=True):
            n = result[f"n_{key}"]
            if n:
                print(
                    f"{answer!r:<10} {n:>6} {result[f'loss_{key}']:>8.4f} {result[f'accuracy_{key}']:>7.3f}"
                )
        print(
            f"{'all':<10} {result['n_prompts']:>6} {result['loss']:>8.4f} {result['accuracy']:>7.3f}"
        )
        _write_json(args.json, {"model": str(args.model), "natural": result})
        return 0

    names = (
        task_names(args.tasks_dir)
        if args.task == "all"
        else [get_task(args.task, args.tasks_dir).name]
    )
    results = []
    for name in tqdm(names, desc="eval", unit="task", file=sys.stderr, disable=None, leave=False):
        results.append(
            evaluate_task(
                model,
                get_task(name, args.tasks_dir),
                n_pairs=args.n_pairs,
                seed=args.seed,
                split=args.split,
                batch_size=args.batch_size,
            )
        )
    width = max(len(n) for n in names + ["mean"])
    print(f"{'task':<{width}}  {'loss':>8} {'acc':>7} {'pairs':>6}")
    for r in results:
        print(f"{r['task']:<{width}}  {r['loss']:>8.4f} {r['accuracy']:>7.3f} {r['n_pairs']:>6}")
    if len(results) > 1:
        mean_loss = sum(r["loss"] for r in results) / len(results)
        mean_acc = sum(r["accuracy"] for r in results) / len(results)
        print(f"{'mean':<{width}}  {mean_loss:>8.4f} {mean_acc:>7.3f}")
    print(
        f"(loss: mean binary cross-entropy per prompt over the two answers; split {args.split}, seed {args.seed})"
    )
    _write_json(
        args.json,
        {"model": str(args.model), "split": args.split, "seed": args.seed, "tasks": results},
    )
    return 0


def _write_json(path: str | None, data: dict) -> None:
    from sparse_lens.io.atomic import write_json

    if path:
        write_json(path, data)
