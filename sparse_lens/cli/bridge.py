"""`sparse-lens bridge fit | train | eval | steer`: bridges between a dense and a sparse model.

    sparse-lens bridge fit DENSE SPARSE --out DIR [--steps 300] [--batch-size 4] [--n-ctx 128]
                       [--lr 1e-3] [--ridge 1e-4] [--encoder-frac 0.25|none]
                       [--weights kl_enc=1,...] [--corpus PATH ...] [--max-minutes M]
    sparse-lens bridge train --dense DENSE [--preset NAME | --config FILE] --out DIR
                       [--steps N] [--resume] [--set key=value ...] [--weights ...]
    sparse-lens bridge eval DIR [--batches 8] [--json FILE]
    sparse-lens bridge steer DIR --node NAME [--task single_double_quote] [--value V]
                       [--strengths 0,0.25,0.5,0.75,1] [--n-pairs 64] [--json FILE]

``fit`` (post hoc) fits bridges between two trained models, both frozen: ridge regression per
site, then Adam on the bridge loss; it writes DIR (bridges.safetensors + bridges.json) and
prints the evaluation against untrained bridges. ``train`` (joint, the paper's route) trains a
new sparse model with the bridge losses against the frozen dense model on the trainer
(progress, resume, --max-minutes); DIR is a sparse checkpoint with the bridges in DIR/bridges.
``eval`` scores every single-switch hybrid per site (KL to the dense model, CE, NMSE) next to
untrained bridges. ``steer`` edits a sparse read node (default counterfactual: its value on
each prompt's contrast partner) and reports the dense model's answer logit difference against
the strength, next to random directions of the same norm. Loss weights (ce, nmse_enc,
nmse_dec, kl_enc, kl_dec) default to 1.
"""

from __future__ import annotations

import argparse

from sparse_lens.cli.options import add_tasks_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bridge",
        help="bridges between a dense and a sparse model: fit, train, eval, steer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="bridge_command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit bridges between two trained models (post hoc)")
    fit.add_argument("dense", help="dense model directory or shipped name")
    fit.add_argument("sparse", help="sparse model directory or shipped name")
    fit.add_argument("--out", required=True, metavar="DIR")
    fit.add_argument(
        "--steps", type=int, default=300, help="Adam steps after the ridge (default 300)"
    )
    fit.add_argument("--batch-size", type=int, default=4)
    fit.add_argument("--n-ctx", type=int, default=128, help="tokens per window (default 128)")
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--ridge", type=float, default=1e-4, help="relative ridge strength")
    fit.add_argument("--ridge-batches", type=int, default=8)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--max-minutes", type=float, metavar="M", help="stop the Adam phase after M minutes"
    )
    fit.add_argument(
        "--eval-batches", type=int, default=8, help="held-out batches to score (default 8)"
    )
    _data_options(fit)
    _bridge_options(fit)
    fit.set_defaults(func=run_fit)

    train = commands.add_parser("train", help="train a sparse model jointly with its bridges")
    train.add_argument("--dense", required=True, help="the frozen dense model (directory or name)")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="a shipped training recipe (default: cpu)")
    source.add_argument("--config", metavar="FILE", help="a TOML file with [model] and [train]")
    train.add_argument("--out", required=True, metavar="DIR")
    train.add_argument("--corpus", nargs="+", metavar="PATH", help="default: the standard library")
    train.add_argument("--steps", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    train.add_argument("--max-minutes", type=float, metavar="M")
    train.add_argument("--no-progress", action="store_true")
    _bridge_options(train)
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser("eval", help="score every single-switch hybrid per site")
    evaluate.add_argument("bridges", metavar="DIR", help="a bridge directory (fit or train output)")
    evaluate.add_argument("--batches", type=int, default=8, help="held-out batches (default 8)")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--n-ctx", type=int, default=128)
    evaluate.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    _model_overrides(evaluate)
    _data_options(evaluate)
    evaluate.set_defaults(func=run_eval)

    steer = commands.add_parser("steer", help="steer the dense model through a sparse read node")
    steer.add_argument("bridges", metavar="DIR")
    steer.add_argument("--node", required=True, help="e.g. blocks.1.attn.hook_read[7]")
    steer.add_argument(
        "--task", default="single_double_quote", help="the task whose pairs to steer"
    )
    add_tasks_dir(steer)
    steer.add_argument(
        "--value", type=float, help="a fixed counterfactual (default: the partner prompt's)"
    )
    steer.add_argument("--strengths", default="0,0.25,0.5,0.75,1", help="comma list in [0, 1]")
    steer.add_argument("--n-pairs", type=int, default=64)
    steer.add_argument("--split", default="validation")
    steer.add_argument("--controls", type=int, default=8, help="random directions (default 8)")
    steer.add_argument("--seed", type=int, default=0)
    steer.add_argument("--json", metavar="FILE")
    _model_overrides(steer)
    steer.set_defaults(func=run_steer)


def _bridge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder-frac",
        default="0.25",
        help="fraction of sparse channels the encoder's AbsTopK keeps, or 'none' (default 0.25)",
    )
    parser.add_argument("--weights", default="", metavar="NAME=W,...", help="loss term weights")


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", metavar="PATH", help="default: the standard library")
    parser.add_argument("--no-progress", action="store_true")


def _model_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dense", help="use this dense model instead of the one bridges.json names"
    )
    parser.add_argument(
        "--sparse", help="use this sparse model instead of the one bridges.json names"
    )


def _encoder_frac(text: str) -> float | None:
    from sparse_lens.errors import SparseLensError

    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise SparseLensError(
            f"expected a number or 'none', got {text!r}", field="encoder-frac"
        ) from None


def _weights(text: str):
    from sparse_lens.bridges.loss import LossWeights
    from sparse_lens.errors import SparseLensError

    values: dict[str, float] = {}
    known = set(LossWeights().to_dict())
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, number = item.partition("=")
        if not sep or name not in known:
            raise SparseLensError(
                f"expected NAME=W with NAME one of {sorted(known)}, got {item!r}", field="weights"
            )
        try:
            values[name] = float(number)
        except ValueError:
            raise SparseLensError(f"{number!r} is not a number", field="weights") from None
    return LossWeights(**values)


def _strengths(text: str) -> list[float]:
    from sparse_lens.errors import SparseLensError

    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SparseLensError(
            f"expected a comma list of numbers, got {text!r}", field="strengths"
        ) from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise SparseLensError(f"strengths must lie in [0, 1], got {text!r}", field="strengths")
    return values


def _data(model, corpus, seed: int, progress: bool):
    from sparse_lens.errors import SparseLensError
    from sparse_lens.train.data import load_train_data

    if model.tokenizer is None:
        raise SparseLensError(
            "the dense model has no tokenizer; bridges need one to read a corpus", field="tokenizer"
        )
    return load_train_data(
        corpus or [], model.cfg.d_vocab, seed, tokenizer=model.tokenizer, progress=progress
    )


def _positive(value: int, name: str) -> int:
    from sparse_lens.errors import SparseLensError

    if value < 1:
        raise SparseLensError(f"must be >= 1, got {value}", field=name)
    return value


def _score(dense, sparse, bridges, data, batches: int, batch_size: int, n_ctx: int, seed: int):
    from sparse_lens.bridges import Bridges, evaluate_bridges

    windows = list(data.eval_batches(batch_size, n_ctx, _positive(batches, "batches")))
    result = evaluate_bridges(dense, sparse, bridges, windows)
    control = evaluate_bridges(
        dense, sparse, Bridges.for_pair(dense, sparse, bridges.encoder_frac, seed=seed), windows
    )
    return result, control


def run_fit(args: argparse.Namespace) -> int:
    from sparse_lens.bridges import FitConfig, check_pair, fit_bridges, save_bridges
    from sparse_lens.bridges.evaluate import format_table
    from sparse_lens.bridges.store import model_reference
    from sparse_lens.model import SparseTransformer

    config = FitConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        n_ctx=args.n_ctx,
        lr=args.lr,
        ridge=args.ridge,
        ridge_batches=args.ridge_batches,
        encoder_frac=_encoder_frac(args.encoder_frac),
        seed=args.seed,
        weights=_weights(args.weights),
        time_limit_s=None if args.max_minutes is None else 60.0 * args.max_minutes,
    )
    dense = SparseTransformer.from_pretrained(args.dense)
    sparse = SparseTransformer.from_pretrained(args.sparse)
    check_pair(dense, sparse)
    _check_n_ctx(dense, sparse, config.n_ctx)
    data = _data(dense, args.corpus, config.seed, not args.no_progress)
    result = fit_bridges(
        dense,
        sparse,
        lambda step: data.batch(step, config.batch_size, config.n_ctx),
        config,
        progress=not args.no_progress,
    )
    scores, control = _score(
        dense,
        sparse,
        result.bridges,
        data,
        args.eval_batches,
        config.batch_size,
        config.n_ctx,
        config.seed,
    )
    info = {
        "route": "post hoc",
        "fit": config.to_dict(),
        "steps_done": result.steps,
        "wall_s": round(result.wall_s, 1),
        "loss_first_last": [result.history[0]["loss"], result.history[-1]["loss"]]
        if result.history
        else None,
        "eval": scores,
        "eval_untrained": control,
    }
    save_bridges(
        result.bridges, args.out, model_reference(args.dense), model_reference(args.sparse), info
    )
    print(format_table(scores, control))
    print(f"fitted {result.steps} steps in {result.wall_s:.1f} s; wrote {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from sparse_lens.bridges.joint import train_joint
    from sparse_lens.cli.train import _quote
    from sparse_lens.train.config import load_config_file, load_preset

    if args.config:
        config = load_config_file(args.config)
    elif args.preset:
        config = load_preset(args.preset)
    else:
        config = None if args.resume else load_preset("cpu")
    overrides = list(args.overrides)
    if args.corpus:
        overrides.append("corpus=[" + ", ".join(_quote(p) for p in args.corpus) + "]")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    result = train_joint(
        args.dense,
        config,
        args.out,
        resume=args.resume,
        overrides=overrides,
        weights=_weights(args.weights),
        encoder_frac=_encoder_frac(args.encoder_frac),
        progress=not args.no_progress,
        max_minutes=args.max_minutes,
    )
    if result.rank != 0:
        return 0
    held = "-" if result.heldout_loss is None else f"{result.heldout_loss:.4f}"
    state = "stopped early (continue with --resume)" if result.interrupted else "finished"
    print(
        f"joint: {result.steps} steps, {state}; sparse held-out loss {held}; wrote {result.out_dir}"
    )
    return 130 if result.interrupted and not result.time_limited else 0


def run_eval(args: argparse.Namespace) -> int:
    from sparse_lens.bridges import load_bridged_models
    from sparse_lens.bridges.evaluate import format_table
    from sparse_lens.bridges.store import write_json

    bridges, dense, sparse, _ = load_bridged_models(args.bridges, args.dense, args.sparse)
    _check_n_ctx(dense, sparse, args.n_ctx)
    data = _data(dense, args.corpus, 0, not args.no_progress)
    scores, control = _score(
        dense,
        sparse,
        bridges,
        data,
        args.batches,
        _positive(args.batch_size, "batch-size"),
        args.n_ctx,
        0,
    )
    print(format_table(scores, control))
    if args.json:
        write_json(args.json, {"bridges": scores, "untrained": control})
    return 0


def run_steer(args: argparse.Namespace) -> int:
    from sparse_lens.bridges import load_bridged_models
    from sparse_lens.bridges.store import write_json
    from sparse_lens.bridges.task_steering import steer_task
    from sparse_lens.tasks import get_task
    from sparse_lens.tasks.generate import generate_pairs

    strengths = _strengths(args.strengths)
    bridges, dense, sparse, _ = load_bridged_models(args.bridges, args.dense, args.sparse)
    task = get_task(args.task, tasks_dir=args.tasks_dir)
    pairs = generate_pairs(
        task,
        _positive(args.n_pairs, "n-pairs"),
        seed=args.seed,
        split=args.split,
        tokenizer=dense.tokenizer,
    )
    batch = pairs.batch(n_ctx=dense.cfg.n_ctx)
    report = steer_task(
        dense, sparse, bridges, args.node, batch, strengths, args.value, args.controls, args.seed
    )
    print(
        f"{args.node} on {report['task']} ({report['n_prompts']} prompts): mean logit(correct) - logit(wrong)"
    )
    print("strength   node   controls (mean)")
    for s, node, ctl in zip(strengths, report["logit_diff"], report["control_mean"], strict=True):
        print(f"{s:8.2f}  {node:6.3f}  {ctl:6.3f}")
    if args.json:
        write_json(args.json, report)
    return 0


def _check_n_ctx(dense, sparse, n_ctx: int) -> None:
    from sparse_lens.errors import SparseLensError

    limit = min(dense.cfg.n_ctx, sparse.cfg.n_ctx)
    if not 1 <= n_ctx <= limit:
        raise SparseLensError(
            f"must be in [1, {limit}] (the models' context), got {n_ctx}", field="n-ctx"
        )
