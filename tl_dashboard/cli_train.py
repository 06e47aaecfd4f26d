"""The training commands of ``tl-dashboard``: ``train``, ``sweep`` and ``resume``.

Their options derive from :class:`~tl_dashboard.config.TrainConfig`'s fields (help text and
choices live there), so a new setting is one edit in ``config.py``. The data folder is scanned
once, checked with :func:`limits.check_config` before any run is recorded, and the scanned split
is handed to the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = [
    "add_train_options",
    "config_from_args",
    "validate_config",
    "args_train",
    "cmd_train",
    "args_sweep",
    "cmd_sweep",
    "args_resume",
    "cmd_resume",
    "add_runs_dir",
]


def add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None, help="run store folder (default: $TL_RUNS_DIR or ./runs)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """DATA_DIR and one ``--flag`` per :class:`TrainConfig` field (``--freeze`` is added per command)."""
    from .config import config_fields, field_type

    p.add_argument("data_dir", help="folder with one sub-folder of images per class (or train/ and val/)")
    for f in config_fields(cli_only=True):
        flag, typ, text = "--" + f.name.replace("_", "-"), field_type(f), f.metadata.get("help", "").replace("%", "%%")
        if typ is bool:
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=f"{text} (default {'on' if f.default else 'off'})"
            )
        else:
            p.add_argument(flag, type=typ, default=f.default, choices=f.metadata.get("choices"), help=f"{text} (default {f.default})")
    p.add_argument("--label", default="", help="a name for the run")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with the result")
    add_runs_dir(p)


def config_from_args(args: argparse.Namespace, freeze: str):
    """The :class:`TrainConfig` of the parsed options."""
    from .config import TrainConfig, config_fields

    values = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    return TrainConfig(**{**values, "data_dir": str(args.data_dir), "freeze": freeze})


def validate_config(config, check_freeze: bool = True, runs_dir: Path | None = None):
    """Scan the folder once and refuse impossible settings (and, with ``runs_dir``, a run whose
    checkpoints cannot fit there) before a run is recorded; returns the split."""
    from .configcheck import check_config
    from .data import scan_images

    check_config(config, None, check_freeze=False)
    split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    check_config(config, split, check_freeze=check_freeze)
    if runs_dir is not None:
        _check_space(runs_dir, config)
    return split


def _check_space(runs_dir: Path | None, config) -> None:
    """Refuse, before a run is recorded, a run whose checkpoints cannot fit in the runs folder."""
    from .layers import describe_blocks
    from .limits import check_run_space, run_bytes_needed
    from .runs import default_runs_dir

    total_params = sum(b.params for b in describe_blocks(config.model, None))
    check_run_space(runs_dir or default_runs_dir(), run_bytes_needed(total_params, epochs=config.epochs), config.epochs)


class _Progress:
    """A one-line progress bar on stderr when it is a terminal, epoch lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        from .engine import Callback

        self.quiet, self.tty = quiet, sys.stderr.isatty()
        outer = self

        class _CB(Callback):
            def on_run_start(self, info: dict[str, Any]) -> None:
                outer.total = info["steps_per_epoch"] * info["epochs"]
                outer.say(
                    f"{info['train_images']} train / {info['val_images']} val images, "
                    f"{len(info['classes'])} classes; weights: {info['weights']['detail']}; "
                    f"{info['freeze_label']}: {info['trainable_params']:,} trainable / {info['frozen_params']:,} frozen params"
                )

            def on_log(self, level: str, message: str) -> None:
                outer.say(message)

            def on_step_end(self, step: dict[str, Any]) -> None:
                if outer.tty and not outer.quiet:
                    bar = "#" * int(30 * step["step"] / max(1, outer.total))
                    sys.stderr.write(f"\r[{bar:<30}] {step['step']}/{outer.total} epoch {step['epoch']:.2f} loss {step['loss']:.4f}")
                    sys.stderr.flush()

            def on_epoch_end(self, row: dict[str, Any]) -> None:
                if outer.tty and not outer.quiet:
                    sys.stderr.write("\n")
                outer.say(
                    f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                    f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['images_per_sec']:.0f} img/s"
                )

        self.callback = _CB()
        self.total = 1

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr)


_SUMMARY_KEYS = (
    "val_accuracy",
    "best_val_accuracy",
    "last_val_accuracy",
    "best_epoch",
    "early_stopped",
    "resumed_from_epoch",
    "concurrent_runs",
    "train_seconds",
    "wall_seconds",
    "cpu_seconds",
    "shared_machine",
    "load_avg",
    "gflops_per_epoch",
    "epochs",
    "trainable_params",
    "frozen_params",
    "feature_cache",
    "classes",
)


def _run_out(store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    s, config = run["summary"], run["config"]
    return {
        "run_id": run_id,
        "status": run["status"],
        "error": run["error"],
        **{k: s.get(k) for k in _SUMMARY_KEYS},
        "weights": (s.get("weights") or {}).get("source"),
        "weights_detail": (s.get("weights") or {}).get("detail"),
        "freeze": config.get("freeze"),
        "model": config.get("model"),
        "skipped_files": s.get("skipped_files", []),
        "run_dir": str(store.run_dir(run_id)),
    }


def _train_in_process(store, run_id: str, quiet: bool, split=None) -> dict[str, Any]:
    from .worker import run_training

    store.mark_running(run_id, os.getpid(), socket.gethostname())
    progress = _Progress(quiet)
    try:
        run_training(store, run_id, [progress.callback], split=split)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted from the terminal (Ctrl-C)")
        raise
    return _run_out(store, run_id)


def _train_one(store, config, label: str, quiet: bool, group_id: str | None = None, split=None) -> dict[str, Any]:
    run_id = store.create_run(config.to_dict(), label=label, group_id=group_id, status="queued")
    return _train_in_process(store, run_id, quiet, split)


def _print_result(out: dict[str, Any], as_json: bool) -> int:
    disk_full = out["status"] == "failed" and str(out["error"]).startswith("Disk full")
    if as_json:
        print(json.dumps(out))
    elif not disk_full:  # a full disk: only the error line below
        acc = (
            "no completed epoch"
            if out.get("val_accuracy") is None
            else f"val accuracy {out['val_accuracy']} (best epoch {out['best_epoch']})"
        )
        print(f"run {out['run_id']}: {out['status']}, {acc}, {out['train_seconds']} s, weights: {out['weights']}")
        for s in out["skipped_files"]:
            print(f"  skipped {s['path']}: {s['reason']}")
    if out["status"] == "failed":
        print(f"error: {out['error']}", file=sys.stderr)
        return 2 if disk_full else 1
    return 0


def _default_runs_dir() -> Path:
    from .runs import default_runs_dir

    return default_runs_dir()


def _store(args: argparse.Namespace):
    from .runs import RunStore

    return RunStore(args.runs_dir)


def args_train(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    p.add_argument("--freeze", default="head", help="head | none | N (first N blocks) | BLOCK,BLOCK (default head)")


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.freeze)
    split = validate_config(config, runs_dir=args.runs_dir or _default_runs_dir())
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun: other ranks train their shards, rank 0 records
        from .engine import train

        train(config, split=split)
        return 0
    return _print_result(_train_one(_store(args), config, args.label, quiet=False, split=split), args.json)


def args_sweep(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    p.add_argument("--depths", default="0,2,4,all", help="comma list of frozen-block counts; 'all' = head only (default 0,2,4,all)")
    p.add_argument("--background", action="store_true", help="queue the runs for the background worker and return")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per depth with seeds SEED..SEED+K-1 (new split and head init each); "
        "the summary gives each depth's mean and 95%% interval (default 1)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from .compare import queue_sweep, sweep_freezes
    from .layers import describe_blocks

    base = config_from_args(args, "head")
    split = validate_config(base, check_freeze=False)
    blocks = describe_blocks(base.model, None)
    freezes = sweep_freezes(args.depths, sum(b.kind != "head" for b in blocks))
    store = _store(args)
    group = time.strftime("sweep-%Y%m%d-%H%M%S")
    if args.background:
        group, ids = queue_sweep(store, base, freezes, label_prefix=f"{args.label or 'sweep'} ", repeats=args.repeats)
        out = {"group_id": group, "run_ids": ids, "status": "queued"}
        print(json.dumps(out) if args.json else f"queued {len(ids)} runs as {group}")
        return 0
    results = []
    for rep in range(max(1, args.repeats)):
        seed = base.seed + rep
        tag = f" seed={seed}" if args.repeats > 1 else ""
        for f in freezes:
            print(f"--- freeze {f}{tag}", file=sys.stderr)
            cfg = replace(config_from_args(args, f), seed=seed)
            results.append(
                _train_one(
                    store, cfg, f"{args.label or 'sweep'} freeze={f}{tag}", quiet=False, group_id=group, split=split if rep == 0 else None
                )
            )
    depths = _sweep_summary(store, group)
    if args.json:
        print(json.dumps({"group_id": group, "runs": results, "depths": depths}))
    else:
        for r in results:
            print(
                f"{r['freeze']:>6}: trainable {r['trainable_params']:>10,}  val acc {'-' if r['val_accuracy'] is None else format(r['val_accuracy'], '.3f')}  {r['train_seconds']:.1f} s  ({r['run_id']})"
            )
        for d in depths:
            print(
                f"{d['freeze']:>6}: mean best val acc {d['mean_accuracy']:.3f} (95% {d['low']:.3f}-{d['high']:.3f}, {d['repeats']} run(s))"
            )
    return 0 if all(r["status"] == "finished" for r in results) else 1


def _sweep_summary(store, group: str) -> list[dict]:
    """Per depth: mean best accuracy over the repeats and its 95% interval (Wilson for one run)."""
    from .compare import sweep_points
    from .stats import group_repeats

    return [
        {
            "freeze": p["freeze"],
            "mean_accuracy": p["best_val_accuracy"],
            "low": p["acc_low"],
            "high": p["acc_high"],
            "repeats": p["repeats"],
            "run_ids": p["run_ids"],
        }
        for p in group_repeats(sweep_points(store, group))
    ]


def args_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--background", action="store_true", help="queue it for the background worker and return")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with the result")
    add_runs_dir(p)


def cmd_resume(args: argparse.Namespace) -> int:
    from .resume import resume_run

    store = _store(args)
    resume_run(store, args.run_id, start=args.background)
    if args.background:
        out = {"run_id": args.run_id, "status": "queued"}
        print(json.dumps(out) if args.json else f"run {args.run_id} queued to resume")
        return 0
    return _print_result(_train_in_process(store, args.run_id, quiet=False), args.json)
