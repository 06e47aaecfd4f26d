"""The ``tl-dashboard`` command: everything the UI does, scriptable.

Subcommands: ``app``, ``train``, ``sweep``, ``resume``, ``resume``, ``lr-find``, ``layers``, ``runs``, ``predict``, ``export``, ``import``, ``cache``, ``backup``.
Label review and data efficiency (:mod:`.cli_peers`): ``label-issues``, ``data-curve``.
Expected errors (:class:`~tl_dashboard.errors.UserError`) exit with status 2 and one line naming
the problem and the fix; anything else is a bug and keeps its traceback. To add a subcommand,
write its ``args_x(parser)`` and ``cmd_x(args) -> int`` (in a module of its own if it is long)
and add one line to :data:`COMMANDS`.
Also runs as ``python -m tl_dashboard.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from . import cli_peers
from .cli_train import (
    _Progress,  # noqa: F401 - the class tests patch as cli._Progress
    add_runs_dir,
    add_train_options,
    args_resume,
    args_sweep,
    args_train,
    cmd_resume,
    cmd_sweep,
    cmd_train,
    config_from_args,
)
from .errors import UserError

__all__ = ["main", "build_parser", "COMMANDS", "Command", "CliError"]


class CliError(UserError):
    """A user-facing error: printed as one line, exit status 2."""


class Command(NamedTuple):
    """One subcommand: its name, one-line help, a function adding its arguments, and the function running it."""

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _store(args: argparse.Namespace):
    from .runs import RunStore

    return RunStore(args.runs_dir)


def args_app(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--allowed-roots",
        default=None,
        help=f"shared server: the Data page may open only folders under these roots ({os.pathsep}-separated; sets TL_ALLOWED_ROOTS)",
    )
    p.add_argument(
        "--admin-password",
        default=None,
        help="teacher mode: this password, typed in the sidebar, unlocks stop/cancel/delete of any run "
        "and the queue limit (or set TL_ADMIN_PASSWORD, which keeps it out of the process list)",
    )
    p.add_argument(
        "--max-queued-per-workspace",
        type=int,
        default=None,
        help="shared server: queued runs one person may have waiting (sets TL_MAX_QUEUED_PER_WORKSPACE)",
    )
    add_runs_dir(p)


def args_lr_find(p: argparse.ArgumentParser) -> None:
    add_train_options(p)
    p.add_argument("--freeze", default="head", help="head | none | N (first N blocks) | BLOCK,BLOCK (default head)")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-iter", type=int, default=100, help="mini-batches at most (default 100)")


def args_layers(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the curated backbones and where their weights come from")
    p.add_argument("--json", action="store_true")


def args_runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--repair", action="store_true", help="set runs.db aside and rebuild it from the run folders (done by itself when it is damaged)"
    )
    add_runs_dir(p)


def args_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average 10 flips and crops (top_k_plain = without)")
    p.add_argument("--json", action="store_true")
    add_runs_dir(p)


def args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id")
    p.add_argument("--format", default="safetensors,torchscript,onnx")
    p.add_argument("--out", type=Path, default=None, help="folder for the files (default: the run's export/ folder)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier exports in --out")
    p.add_argument("--json", action="store_true")
    add_runs_dir(p)


def args_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list the entries (default: a summary)")
    p.add_argument("--clear", action="store_true", help="delete every entry and the scan memo")
    p.add_argument("--json", action="store_true")


def args_backup(p: argparse.ArgumentParser) -> None:
    p.add_argument("dest", type=Path, help="a new or empty folder; restore by using it as the runs folder (README)")
    p.add_argument("--json", action="store_true")
    add_runs_dir(p)


def args_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", type=Path)
    p.add_argument("--into", type=Path, default=None, help="a new folder (default: a fresh folder under ./datasets)")
    p.add_argument("--json", action="store_true")


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_finder import lr_find

    config = config_from_args(args, args.freeze)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    res = lr_find(config, start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter, progress=say)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(
            f"suggested lr {res.suggested_lr:.2e} (valley; steepest {res.steep_lr:.2e}, minimum/10 {res.min_lr:.2e}) "
            f"for {res.freeze_label}, {res.iterations} iterations in {res.seconds:.1f} s"
            + (" (stopped when the loss diverged)" if res.stopped_early else "")
        )
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .backbones import CURATED_BACKBONES, describe_backbone
    from .layers import describe_blocks

    if args.list:
        rows = [describe_backbone(n) for n in CURATED_BACKBONES]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(f"{r['name']:<24} {r['weights_source']:<9} {r['description']}")
        return 0
    blocks = describe_blocks(args.model, args.image_size or None)
    rows = [
        {
            "index": b.index,
            "name": b.name,
            "kind": b.kind,
            "params": b.params,
            "output_shape": list(b.output_shape) if b.output_shape else None,
        }
        for b in blocks
    ]
    if args.json:
        print(json.dumps({"model": args.model, "blocks": rows, "total_params": sum(r["params"] for r in rows)}))
    else:
        print(f"{args.model}: {len(rows)} blocks, {sum(r['params'] for r in rows):,} parameters")
        for r in rows:
            shape = "x".join(map(str, r["output_shape"])) if r["output_shape"] else "?"
            print(f"  {r['index']:>2} {r['name']:<12} {r['kind']:<5} {r['params']:>12,}  -> {shape}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .worker import reap

    store = _store(args)
    if args.repair and not store.repair_notice:
        from .records import repair_store

        repair_store(store)
    for notice in store.pop_notices():
        print(notice, file=sys.stderr)
    reap(store)
    rows = []
    for r in store.list_runs():
        s = r["summary"]
        rows.append(
            {
                "run_id": r["id"],
                "label": r["label"],
                "status": r["status"],
                "model": r["config"].get("model"),
                "freeze": r["config"].get("freeze"),
                "trainable_params": s.get("trainable_params"),
                "val_accuracy": s.get("val_accuracy"),
                "best_val_accuracy": s.get("best_val_accuracy"),
                "epochs": s.get("epochs"),
                "train_seconds": s.get("train_seconds"),
                "error": r["error"],
                "created": r["created"],
            }
        )
    if args.json:
        print(json.dumps(rows))
    else:
        if not rows:
            print(f"no runs in {store.root}")
        for r in rows:
            acc = f"{r['val_accuracy']:.3f}" if r["val_accuracy"] is not None else "-"
            print(f"{r['run_id']}  {r['status']:<11} {r['model'] or '-':<22} freeze={r['freeze'] or '-':<6} val acc {acc}  {r['label']}")
    return 0


def _finished_run(store, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    if run is None:
        raise CliError(f"No run {run_id!r} in {store.root}. `tl-dashboard runs` lists them.")
    if not store.has_checkpoint(run_id):
        raise CliError(f"Run {run_id} has no checkpoint yet ({run['status']}). Wait for its first epoch or pick another run.")
    return run


def cmd_predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_each

    store = _store(args)
    _finished_run(store, args.run_id)
    missing = [p for p in args.images if not p.is_file()]
    if missing:
        raise CliError(f"Image not found: {missing[0]}.")
    failures: list = []
    if args.tta:
        from .tta import predict_tta

        preds = [(t["top_k"], t["top_k_plain"]) for t in predict_tta(store.run_dir(args.run_id), [str(p) for p in args.images], args.top_k)]
    else:  # a bad file is reported by name; the others are still predicted
        got, failures = predict_each(
            store.run_dir(args.run_id), [str(p) for p in args.images], [str(p) for p in args.images], top_k=args.top_k, cam=False
        )
        for f in failures:
            print(f"error: {f['reason']}", file=sys.stderr)
        by_name = {pr.name: pr for pr in got}
        args.images = [p for p in args.images if str(p) in by_name]
        preds = [(by_name[str(p)].top, None) for p in args.images]
    rows = [
        {"image": str(p), "top_k": [{"label": c, "prob": round(float(q), 6)} for c, q in top]}
        | ({"top_k_plain": [{"label": c, "prob": round(float(q), 6)} for c, q in plain]} if plain else {})
        for p, (top, plain) in zip(args.images, preds)
    ]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r["image"] + ": " + ", ".join(f"{c['label']} {c['prob']:.3f}" for c in r["top_k"]))
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .evaluate import export_run

    store = _store(args)
    _finished_run(store, args.run_id)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    paths = export_run(store, args.run_id, formats=formats, out_dir=args.out, overwrite=args.overwrite)
    out = {k: str(v) for k, v in paths.items()}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_zip

    if not args.archive.is_file():
        raise CliError(f"Archive not found: {args.archive}.")
    rep = import_zip(args.archive, args.into)
    out = {"root": str(rep.root), "written": len(rep.written), "skipped": [s.to_dict() for s in rep.skipped]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"imported {out['written']} images into {out['root']}")
        for s in out["skipped"]:
            print(f"  skipped {s['path']}: {s['reason']}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the dashboard. The process becomes the Streamlit server (exec), so SIGTERM/SIGINT to
    this pid end the server; training workers run in their own session and keep going."""
    app = Path(__file__).resolve().parent.parent / "app.py"
    if not app.exists():
        raise CliError(f"app.py not found next to the package ({app}); run from a source checkout.")
    env = dict(os.environ)
    if args.runs_dir:
        env["TL_RUNS_DIR"] = str(args.runs_dir)
    if args.allowed_roots:
        env["TL_ALLOWED_ROOTS"] = args.allowed_roots
    if args.admin_password:  # by environment only: never on a child's command line, never logged
        env["TL_ADMIN_PASSWORD"] = args.admin_password
    if args.max_queued_per_workspace is not None:
        env["TL_MAX_QUEUED_PER_WORKSPACE"] = str(args.max_queued_per_workspace)
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup_store

    rep = backup_store(_store(args), args.dest)
    print(
        json.dumps(rep.to_dict())
        if args.json
        else f"backed up {rep.runs} runs ({rep.bytes / 1e6:.1f} MB) to {rep.dest}; integrity check: {rep.integrity}"
    )
    return 0 if rep.integrity == "ok" else 1


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import cli_cache

    return cli_cache(args.list, args.clear, args.json)


# The subcommands, one line each: (name, help, add its arguments, run it). A command in its own
# module keeps heavy imports (torch, timm) inside its functions, so `tl-dashboard --help` stays fast.
COMMANDS: list[Command] = [
    Command("app", "start the dashboard (streamlit run app.py)", args_app, cmd_app),
    Command("train", "train one run in this process", args_train, cmd_train),
    Command("sweep", "one run per freeze depth, one after another", args_sweep, cmd_sweep),
    Command("resume", "continue an interrupted or stopped run from its last completed epoch", args_resume, cmd_resume),
    Command("lr-find", "learning-rate range test (fastai's lr_find) for these settings", args_lr_find, cmd_lr_find),
    Command("layers", "a model's blocks in forward order with parameter counts", args_layers, cmd_layers),
    Command("runs", "the runs in the store", args_runs, cmd_runs),
    Command("predict", "top-k classes for images with a trained run", args_predict, cmd_predict),
    Command("export", "export a run's model (safetensors, torchscript, onnx)", args_export, cmd_export),
    Command("import", "import a zip of class folders safely", args_import, cmd_import),
    Command("backup", "copy the run database (SQLite online backup, safe while runs train) and run folders", args_backup, cmd_backup),
    Command("cache", "the on-disk cache of decoded images and frozen features: size, list, clear", args_cache, cmd_cache),
    Command("label-issues", "rank every image by how likely its label is wrong", cli_peers.args_label_issues, cli_peers.cmd_label_issues),
    Command("data-curve", "validation accuracy against training images per class", cli_peers.args_data_curve, cli_peers.cmd_data_curve),
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tl-dashboard", description="Transfer learning on image folders with timm backbones.")
    sub = ap.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        c.add_args(sub.add_parser(c.name, help=c.help))
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return next(c for c in COMMANDS if c.name == args.command).run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, sqlite3.DatabaseError) as exc:  # expected: one line naming the value and the fix
        print(f"error: {_one_line(exc, args)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk is the user's to fix; any other error keeps its traceback
        if not _is_disk_full(exc):
            raise
        print(f"error: {_one_line(exc, args)}", file=sys.stderr)
        return 2


def _is_disk_full(exc: BaseException) -> bool:
    from .storage import is_disk_full

    return is_disk_full(exc)


def _one_line(exc: BaseException, args: argparse.Namespace) -> str:
    from .storage import disk_full_from, is_disk_full

    folder = getattr(args, "runs_dir", None) or os.environ.get("TL_RUNS_DIR") or "runs"
    if is_disk_full(exc) and not isinstance(exc, UserError):
        exc = disk_full_from(exc, Path(folder), None, "the run store")
    elif isinstance(exc, sqlite3.DatabaseError):
        return (
            f"the run database in {folder} cannot be read ({exc}); run `tl-dashboard runs --repair "
            f"--runs-dir {folder}` to rebuild it from the run folders"
        )
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
