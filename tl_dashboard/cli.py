"""The ``tl-dashboard`` command: everything the UI does, scriptable.

Subcommands: ``app``, ``train``, ``sweep``, ``lr-find``, ``layers``, ``runs``, ``predict``, ``export``, ``import``, ``cache``.
Label review and data efficiency (:mod:`.cli_peers`): ``label-issues``, ``data-curve``.
Errors exit with status 2 and one line naming the problem and the fix, never a traceback.
Also runs as ``python -m tl_dashboard.cli``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

__all__ = ["main", "build_parser"]


class CliError(UserError):
    """A user-facing error: printed as one line, exit status 2."""


def _add_runs_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run store folder (default: $TL_RUNS_DIR or ./runs)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .engine import TrainConfig

    d = TrainConfig(data_dir="")
    p.add_argument("data_dir", help="folder with one sub-folder of images per class (or train/ and val/)")
    p.add_argument("--model", default=d.model, help=f"timm model name (default {d.model})")
    p.add_argument("--weights", default=d.weights, help="auto | none | PATH to .safetensors/.pth (default auto)")
    p.add_argument("--bn-mode", default=d.bn_mode, choices=["frozen", "train"],
                   help="BatchNorm in frozen blocks: frozen = running statistics (default), train = update them")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--image-size", type=int, default=d.image_size, help="0 = the weights' own size")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="random resized crop, flip and colour jitter (default off)")
    p.add_argument("--feature-cache", default=d.feature_cache, choices=["auto", "off"],
                   help="cache the frozen prefix's output when valid (default auto)")
    p.add_argument("--cache-max-mb", type=int, default=d.cache_max_mb)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--unfreeze-at", type=int, default=d.unfreeze_at,
                   help="unfreeze schedule: at the start of this epoch (0 = never) unfreeze the last frozen blocks")
    p.add_argument("--unfreeze-blocks", type=int, default=d.unfreeze_blocks, help="how many (default 2)")
    p.add_argument("--backbone-lr-scale", type=float, default=d.backbone_lr_scale,
                   help="their learning rate relative to --lr (default 0.1)")
    p.add_argument("--nproc", type=int, default=d.nproc,
                   help="processes for DistributedDataParallel via torchrun (one per GPU; gloo on CPU)")
    p.add_argument("--label", default="", help="a name for the run")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with the result")
    _add_runs_dir(p)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tl-dashboard", description="Transfer learning on image folders with timm backbones.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("app", help="start the dashboard (streamlit run app.py)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--allowed-roots", default=None,
                   help=f"shared server: the Data page may open only folders under these roots ({os.pathsep}-separated; "
                        "sets TL_ALLOWED_ROOTS)")
    p.add_argument("--admin-password", default=None,
                   help="teacher mode: this password, typed in the sidebar, unlocks stop/cancel/delete of any run "
                        "and the queue limit (or set TL_ADMIN_PASSWORD, which keeps it out of the process list)")
    p.add_argument("--max-queued-per-workspace", type=int, default=None,
                   help="shared server: queued runs one person may have waiting (sets TL_MAX_QUEUED_PER_WORKSPACE)")
    _add_runs_dir(p)

    p = sub.add_parser("train", help="train one run in this process")
    _add_train_options(p)
    p.add_argument("--freeze", default="head", help="head | none | N (first N blocks) | BLOCK,BLOCK (default head)")

    p = sub.add_parser("sweep", help="one run per freeze depth, one after another")
    _add_train_options(p)
    p.add_argument("--depths", default="0,2,4,all",
                   help="comma list of frozen-block counts; 'all' = head only (default 0,2,4,all)")
    p.add_argument("--background", action="store_true", help="queue the runs for the background worker and return")

    p = sub.add_parser("lr-find", help="learning-rate range test (fastai's lr_find) for these settings")
    _add_train_options(p)
    p.add_argument("--freeze", default="head", help="head | none | N (first N blocks) | BLOCK,BLOCK (default head)")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-iter", type=int, default=100, help="mini-batches at most (default 100)")

    p = sub.add_parser("layers", help="a model's blocks in forward order with parameter counts")
    p.add_argument("model", nargs="?", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the curated backbones and where their weights come from")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="the runs in the store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repair", action="store_true",
                   help="set runs.db aside and rebuild it from the run folders (done by itself when it is damaged)")
    _add_runs_dir(p)

    p = sub.add_parser("predict", help="top-k classes for images with a trained run")
    p.add_argument("run_id")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average 10 flips and crops (top_k_plain = without)")
    p.add_argument("--json", action="store_true")
    _add_runs_dir(p)

    p = sub.add_parser("export", help="export a run's model (safetensors, torchscript, onnx)")
    p.add_argument("run_id")
    p.add_argument("--format", default="safetensors,torchscript,onnx")
    p.add_argument("--out", type=Path, default=None, help="folder for the files (default: the run's export/ folder)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier exports in --out")
    p.add_argument("--json", action="store_true")
    _add_runs_dir(p)

    p = sub.add_parser("cache", help="the on-disk cache of decoded images and frozen features: size, list, clear")
    p.add_argument("--list", action="store_true", help="list the entries (default: a summary)")
    p.add_argument("--clear", action="store_true", help="delete every entry and the scan memo")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("backup", help="copy the run database (SQLite online backup, safe while runs train) and run folders")
    p.add_argument("dest", type=Path, help="a new or empty folder; restore by using it as the runs folder (README)")
    p.add_argument("--json", action="store_true")
    _add_runs_dir(p)

    p = sub.add_parser("import", help="import a zip of class folders safely")
    p.add_argument("archive", type=Path)
    p.add_argument("--into", type=Path, default=None, help="a new folder (default: a fresh folder under ./datasets)")
    p.add_argument("--json", action="store_true")

    from . import cli_peers

    cli_peers.add_parsers(sub, _add_train_options)
    return ap


def _store(args: argparse.Namespace):
    from .runs import RunStore

    return RunStore(args.runs_dir)


def _config_from_args(args: argparse.Namespace, freeze: str):
    from .engine import TrainConfig

    return TrainConfig(
        data_dir=str(args.data_dir), model=args.model, weights=args.weights, freeze=freeze,
        bn_mode=args.bn_mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, image_size=args.image_size, val_fraction=args.val_fraction,
        seed=args.seed, augment=args.augment, feature_cache=args.feature_cache,
        cache_max_mb=args.cache_max_mb, device=args.device, nproc=args.nproc,
        unfreeze_at=args.unfreeze_at, unfreeze_blocks=args.unfreeze_blocks, backbone_lr_scale=args.backbone_lr_scale,
    )


def _validate_config(config) -> None:
    """Fail fast, before a run is recorded, on input the engine would refuse."""
    from .backbones import BackboneError
    from .data import scan_images
    from .engine import resolve_device

    if config.nproc < 1:
        raise CliError("--nproc must be at least 1.")
    if config.epochs < 1 or config.batch_size < 1:
        raise CliError("--epochs and --batch-size must be at least 1.")
    if config.unfreeze_at == 1 or config.unfreeze_at > config.epochs:
        raise CliError(f"--unfreeze-at {config.unfreeze_at}: pick an epoch in 2..{config.epochs} (or 0 for no schedule).")
    if config.lr <= 0:
        raise CliError(f"--lr must be positive, got {config.lr}.")
    import timm

    if not timm.is_model(config.model):
        raise BackboneError(f"Unknown model {config.model!r}. `tl-dashboard layers --list` shows the curated ones; any timm name works.")
    if config.weights not in ("auto", "none") and not Path(config.weights).is_file():
        raise BackboneError(f"Weights file not found: {config.weights}. Give a .safetensors or .pth file, or --weights auto/none.")
    scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    resolve_device(config.device)


class _Progress:
    """A one-line progress bar on stderr when it is a terminal, epoch lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        from .engine import Callback

        self.quiet, self.tty = quiet, sys.stderr.isatty()
        outer = self

        class _CB(Callback):
            def on_run_start(self, info: dict[str, Any]) -> None:
                outer.total = info["steps_per_epoch"] * info["epochs"]
                outer.say(f"{info['train_images']} train / {info['val_images']} val images, "
                          f"{len(info['classes'])} classes; weights: {info['weights']['detail']}; "
                          f"{info['freeze_label']}: {info['trainable_params']:,} trainable / {info['frozen_params']:,} frozen params")

            def on_log(self, level: str, message: str) -> None:
                outer.say(message)

            def on_step_end(self, step: dict[str, Any]) -> None:
                if outer.tty and not outer.quiet:
                    frac = step["step"] / max(1, outer.total)
                    bar = "#" * int(30 * frac)
                    sys.stderr.write(f"\r[{bar:<30}] {step['step']}/{outer.total} epoch {step['epoch']:.2f} loss {step['loss']:.4f}")
                    sys.stderr.flush()

            def on_epoch_end(self, row: dict[str, Any]) -> None:
                if outer.tty and not outer.quiet:
                    sys.stderr.write("\n")
                outer.say(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
                          f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | {row['images_per_sec']:.0f} img/s")

        self.callback = _CB()
        self.total = 1

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr)


def _train_one(store, config, label: str, quiet: bool, group_id: str | None = None) -> dict[str, Any]:
    from .worker import run_training

    run_id = store.create_run(config.to_dict(), label=label, group_id=group_id, status="queued")
    store.mark_running(run_id, os.getpid(), socket.gethostname())
    progress = _Progress(quiet)
    try:
        run_training(store, run_id, [progress.callback])
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted from the terminal (Ctrl-C)")
        raise
    run = store.get_run(run_id)
    s = run["summary"]
    out = {
        "run_id": run_id, "status": run["status"], "error": run["error"],
        "val_accuracy": s.get("val_accuracy"), "best_val_accuracy": s.get("best_val_accuracy"),
        "train_seconds": s.get("train_seconds"), "epochs": s.get("epochs"),
        "trainable_params": s.get("trainable_params"), "frozen_params": s.get("frozen_params"),
        "weights": (s.get("weights") or {}).get("source"), "weights_detail": (s.get("weights") or {}).get("detail"),
        "feature_cache": s.get("feature_cache"), "freeze": config.freeze, "model": config.model,
        "skipped_files": s.get("skipped_files", []), "classes": s.get("classes"),
        "run_dir": str(store.run_dir(run_id)),
    }
    return out


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args, args.freeze)
    _validate_config(config)
    from .layers import describe_blocks, parse_freeze

    blocks = describe_blocks(config.model, None)
    parse_freeze(config.freeze, blocks, config.bn_mode)  # fail before recording a run
    _check_space(args, config, sum(b.params for b in blocks))
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun: other ranks train their shards, rank 0 records
        from .engine import train

        train(config)
        return 0
    out = _train_one(_store(args), config, args.label, quiet=False)
    disk_full = out["status"] == "failed" and str(out["error"]).startswith("Disk full")
    if args.json:
        print(json.dumps(out))
    elif not disk_full:  # a full disk: only the error line below
        print(f"run {out['run_id']}: {out['status']}, val accuracy {out['val_accuracy']}, "
              f"{out['train_seconds']} s, weights: {out['weights']}")
        for s in out["skipped_files"]:
            print(f"  skipped {s['path']}: {s['reason']}")
    if out["status"] == "failed":
        print(f"error: {out['error']}", file=sys.stderr)
        return 2 if disk_full else 1
    return 0


def _check_space(args: argparse.Namespace, config, total_params: int) -> None:
    """Refuse, before a run is recorded, a run whose checkpoints cannot fit in the runs folder."""
    from .limits import check_run_space, run_bytes_needed
    from .runs import default_runs_dir

    check_run_space(args.runs_dir or default_runs_dir(), run_bytes_needed(total_params, epochs=config.epochs),
                    config.epochs)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .compare import queue_sweep, sweep_freezes
    from .layers import describe_blocks

    base = _config_from_args(args, "head")
    _validate_config(base)
    blocks = describe_blocks(base.model, None)
    freezes = sweep_freezes(args.depths, sum(b.kind != "head" for b in blocks))
    store = _store(args)
    group = time.strftime("sweep-%Y%m%d-%H%M%S")
    results = []
    if args.background:
        group, ids = queue_sweep(store, base, freezes, label_prefix=f"{args.label or 'sweep'} ")
        out = {"group_id": group, "run_ids": ids, "status": "queued"}
        print(json.dumps(out) if args.json else f"queued {len(ids)} runs as {group}")
        return 0
    for f in freezes:
        cfg = _config_from_args(args, f)
        print(f"--- freeze {f}", file=sys.stderr)
        results.append(_train_one(store, cfg, f"{args.label or 'sweep'} freeze={f}", quiet=False, group_id=group))
    if args.json:
        print(json.dumps({"group_id": group, "runs": results}))
    else:
        for r in results:
            print(f"{r['freeze']:>6}: trainable {r['trainable_params']:>10,}  val acc {r['val_accuracy']:.3f}  {r['train_seconds']:.1f} s  ({r['run_id']})")
    return 0 if all(r["status"] == "finished" for r in results) else 1


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_finder import lr_find

    config = _config_from_args(args, args.freeze)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    res = lr_find(config, start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter, progress=say)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"suggested lr {res.suggested_lr:.2e} (valley; steepest {res.steep_lr:.2e}, minimum/10 {res.min_lr:.2e}) "
              f"for {res.freeze_label}, {res.iterations} iterations in {res.seconds:.1f} s"
              + (" (stopped when the loss diverged)" if res.stopped_early else ""))
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
    rows = [{"index": b.index, "name": b.name, "kind": b.kind, "params": b.params,
             "output_shape": list(b.output_shape) if b.output_shape else None} for b in blocks]
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
        rows.append({
            "run_id": r["id"], "label": r["label"], "status": r["status"], "model": r["config"].get("model"),
            "freeze": r["config"].get("freeze"), "trainable_params": s.get("trainable_params"),
            "val_accuracy": s.get("val_accuracy"), "best_val_accuracy": s.get("best_val_accuracy"),
            "epochs": s.get("epochs"), "train_seconds": s.get("train_seconds"), "error": r["error"],
            "created": r["created"],
        })
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
    from .evaluate import predict_images

    store = _store(args)
    _finished_run(store, args.run_id)
    missing = [p for p in args.images if not p.is_file()]
    if missing:
        raise CliError(f"Image not found: {missing[0]}.")
    if args.tta:
        from .tta import predict_tta

        preds = [(t["top_k"], t["top_k_plain"]) for t in predict_tta(store.run_dir(args.run_id), [str(p) for p in args.images], args.top_k)]
    else:
        preds = [(pr.top, None) for pr in predict_images(store.run_dir(args.run_id), [str(p) for p in args.images], top_k=args.top_k, cam=False)]
    rows = [{"image": str(p), "top_k": [{"label": c, "prob": round(float(q), 6)} for c, q in top]}
            | ({"top_k_plain": [{"label": c, "prob": round(float(q), 6)} for c, q in plain]} if plain else {})
            for p, (top, plain) in zip(args.images, preds)]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r["image"] + ": " + ", ".join(f"{c['label']} {c['prob']:.3f}" for c in r["top_k"]))
    return 0


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
    print(json.dumps(rep.to_dict()) if args.json else
          f"backed up {rep.runs} runs ({rep.bytes / 1e6:.1f} MB) to {rep.dest}; integrity check: {rep.integrity}")
    return 0 if rep.integrity == "ok" else 1


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import cli_cache

    return cli_cache(args.list, args.clear, args.json)


_COMMANDS = {"backup": cmd_backup, "cache": cmd_cache, "app": cmd_app, "train": cmd_train, "sweep": cmd_sweep, "lr-find": cmd_lr_find,
             "layers": cmd_layers, "runs": cmd_runs,
             "predict": cmd_predict, "export": cmd_export, "import": cmd_import}


def _command(name: str):
    from . import cli_peers

    return _COMMANDS.get(name) or cli_peers.COMMANDS[name]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args.command)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, sqlite3.Error) as exc:
        # DataError, BackboneError, LayersError, ArchiveError are ValueErrors with one clear line.
        print(f"error: {_one_line(exc, args)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException, args: argparse.Namespace) -> str:
    from .storage import disk_full_from, is_disk_full

    folder = getattr(args, "runs_dir", None) or os.environ.get("TL_RUNS_DIR") or "runs"
    if is_disk_full(exc) and not isinstance(exc, UserError):
        exc = disk_full_from(exc, Path(folder), None, "the run store")
    elif isinstance(exc, sqlite3.DatabaseError):
        return (f"the run database in {folder} cannot be read ({exc}); run `tl-dashboard runs --repair "
                f"--runs-dir {folder}` to rebuild it from the run folders")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
