"""CLI commands for label review and data efficiency: ``label-issues`` and ``data-curve``.

Registered by :mod:`tl_dashboard.cli` (one line each in its ``COMMANDS``); errors are ``UserError``s
that the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["args_label_issues", "cmd_label_issues", "args_data_curve", "cmd_data_curve"]


def args_label_issues(p: argparse.ArgumentParser) -> None:
    from .cli_train import add_train_options

    add_train_options(p)
    p.add_argument(
        "--run", default=None, metavar="RUN_ID", help="use this run's backbone, weights and image size (default: the options above)"
    )
    p.add_argument("--folds", type=int, default=5, help="K of the out-of-sample K-fold (default 5)")
    p.add_argument("--top", type=int, default=0, help="list the top N ranked images instead of only the flagged ones")


def args_data_curve(p: argparse.ArgumentParser) -> None:
    from .cli_train import add_train_options

    add_train_options(p)
    p.add_argument("--sizes", default="", help="images per class to try, e.g. 1,2,5,10 (default 1,2,5,10,20,50,... up to all)")
    p.add_argument("--draws", type=int, default=5, help="random draws per size for the linear probe (default 5)")
    p.add_argument(
        "--plans",
        default="head",
        help="comma list: head (linear probe on cached features), none, N frozen blocks, scratch; "
        "all but head train real runs (default head)",
    )
    p.add_argument("--trained-draws", type=int, default=2, help="draws per size for trained plans (default 2)")


def _config(args: argparse.Namespace):
    from .cli import CliError
    from .cli_train import config_from_args

    config = config_from_args(args, "head")
    if getattr(args, "run", None):
        from dataclasses import replace

        from .runs import RunStore

        store = RunStore(args.runs_dir)
        run = store.get_run(args.run)
        if run is None:
            raise CliError(f"No run {args.run!r} in {store.root}. `tl-dashboard runs` lists them.")
        rc = run["config"]
        config = replace(
            config,
            model=rc.get("model", config.model),
            weights=rc.get("weights", config.weights),
            image_size=int(rc.get("image_size", config.image_size) or 0),
        )
    return config


def cmd_label_issues(args: argparse.Namespace) -> int:
    from .label_issues import find_label_issues

    config = _config(args)
    rep = find_label_issues(config, folds=args.folds)
    out = rep.to_dict(top=args.top or None)
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"{out['images']} images, {out['flagged']} flagged as likely label errors "
        f"(out-of-sample accuracy {out['oos_accuracy']:.3f}, {out['folds']}-fold, {config.model})",
        file=sys.stderr,
    )
    for r in out["suspects"]:
        print(f"{r['score']:.4f}  {r['given']:>12} -> {r['predicted']:<12} ({r['confidence']:.0%})  {r['path']}")
    return 0


def cmd_data_curve(args: argparse.Namespace) -> int:
    from .cli import CliError
    from .data_curve import data_curve

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()] or None
    except ValueError:
        raise CliError(f"--sizes {args.sizes!r}: give a comma list of whole numbers, e.g. 1,2,5,10.") from None
    config = _config(args)
    curve = data_curve(
        config,
        sizes=sizes,
        draws=args.draws,
        plans=args.plans.split(","),
        trained_draws=args.trained_draws,
        progress=lambda m: print(m, file=sys.stderr),
    )
    out = curve.to_dict()
    if args.json:
        print(json.dumps(out))
        return 0
    for p in out["points"]:
        print(
            f"{p['plan']:>8} {p['n_per_class']:>5}/class  val acc {p['mean']:.3f} +- {p['std']:.3f} "
            f"(min {p['min']:.3f}, max {p['max']:.3f}, {len(p['accuracies'])} draws)"
        )
    print(f"seconds: {out['seconds']}")
    return 0
