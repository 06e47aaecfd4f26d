"""Background training: queue a run, start a worker process, stop it, notice it died.

A run is queued in the :class:`~tl_dashboard.runs.RunStore`; :func:`submit_run` then starts a
worker process (``python -m tl_dashboard.worker``) in its own session, so it survives page
reloads, Streamlit reruns and a restart of the server. A worker claims queued runs one at a
time (at most ``TL_MAX_RUNNING`` at once, default 1) until the queue is empty, then exits.

Why a subprocess and not ``multiprocessing``: Streamlit's APIs are not thread-safe and a run must
outlive the script run, the page and even the server; a child of ``multiprocessing`` is joined
at interpreter exit and dies with its parent's process group, a new session does not.

Example:
    >>> store = RunStore("runs")
    >>> run_id = submit_run(store, TrainConfig(data_dir="sample_data/emoji3"))
    >>> request_stop(store, run_id)
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .engine import Callback, StopCheck, TrainConfig, TrainResult, train
from .errors import UserError
from .limits import RUN_FIX, check_run_start, run_bytes_needed, run_files_what
from .records import record_end, record_failure
from .resume import RESUME_FILE
from .runs import RunStore
from .storage import MARGIN_BYTES, DiskFull, free_bytes, is_disk_full

__all__ = ["StoreCallback", "submit_run", "start_worker", "request_stop", "run_training", "max_running", "reap", "live_workers"]

HEARTBEAT_S = 2.0


def max_running() -> int:
    """How many runs may train at once (``TL_MAX_RUNNING``; default one per GPU, else 1)."""
    from .fairqueue import max_running as _max_running

    return _max_running()


class StoreCallback(Callback):
    """Metrics sink: writes steps (batched), epochs, progress, heartbeat and log lines to the store."""

    def __init__(self, store: RunStore, run_id: str, flush_every: float = 0.5) -> None:
        self.store, self.run_id, self.flush_every = store, run_id, flush_every
        self._steps: list[dict[str, Any]] = []
        self._last_flush = 0.0
        self._progress: dict[str, Any] = {}
        self._start = time.time()

    def on_run_start(self, info: dict[str, Any]) -> None:
        self._progress = {
            "epoch": 0,
            "epochs": info["epochs"],
            "step": 0,
            "total_steps": info["steps_per_epoch"] * info["epochs"],
            "images_per_sec": None,
        }
        self.store.update_summary(
            self.run_id,
            {
                k: info[k]
                for k in (
                    "classes",
                    "train_images",
                    "val_images",
                    "trainable_params",
                    "frozen_params",
                    "weights",
                    "feature_cache",
                    "device",
                    "freeze_label",
                    "image_size",
                    "skipped_files",
                    "blocks",
                    "unfreeze",
                )
            },
        )
        self.store.update_dataset(
            self.run_id,
            {  # what it really trained on (the folder may change later)
                "images": info["train_images"] + info["val_images"],
                "classes": len(info["classes"]),
                **({"fingerprint": info["data_fingerprint"]} if info.get("data_fingerprint") else {}),
            },
        )
        self.store.heartbeat(self.run_id, self._progress)

    def on_log(self, level: str, message: str) -> None:
        self.store.log(self.run_id, level, message)

    def on_epoch_start(self, epoch: int) -> None:
        self._progress["epoch"] = epoch

    def on_step_end(self, step: dict[str, Any]) -> None:
        self._steps.append({**step, "time": time.time()})
        self._progress.update(step=step["step"], elapsed=step["elapsed"])
        if time.time() - self._last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self.store.add_steps(self.run_id, self._steps)
        self._steps = []
        self._last_flush = time.time()
        self.store.heartbeat(self.run_id, self._progress)

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.flush()
        self.store.add_epoch(self.run_id, row)
        self._progress["images_per_sec"] = row["images_per_sec"]

    def on_run_end(self, result: TrainResult) -> None:
        self.flush()


class SpaceCheck(Callback):
    """Refuse to train, before the first batch, when the run's checkpoints cannot fit in its folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_run_start(self, info: dict[str, Any]) -> None:
        check_run_start(self.run_dir, info)


def run_training(store: RunStore, run_id: str, extra_callbacks: list[Callback] | None = None, split: Any = None) -> TrainResult | None:
    """Train the run ``run_id`` (already marked running) in this process and record the outcome.

    ``split``: the data already scanned (the CLI scans once). Expected errors
    (:class:`~tl_dashboard.errors.UserError`) end the run with their one line; any other
    exception keeps its traceback in the run's log. Running out of memory says what to lower.
    """
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(run_id)
    config = TrainConfig.from_dict(run["config"])
    gpu = os.environ.get("TL_WORKER_GPU")
    if gpu and config.device == "auto" and config.nproc <= 1:  # one run per GPU: this worker's GPU
        config.device = f"cuda:{gpu}"
    if config.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _run_distributed(store, run_id, config.nproc)
    callbacks: list[Callback] = [
        SpaceCheck(store.run_dir(run_id)),
        StoreCallback(store, run_id),
        StopCheck(lambda: store.stop_requested(run_id)),
    ]
    callbacks += extra_callbacks or []
    beating = threading.Event()

    def beat() -> None:  # a heartbeat independent of training progress (cache builds can be long)
        while not beating.wait(HEARTBEAT_S):
            try:
                store.heartbeat(run_id)
            except Exception:  # a missed beat is harmless
                pass

    threading.Thread(target=beat, daemon=True).start()
    try:
        resume = (store.run_dir(run_id) / RESUME_FILE).is_file()  # resume_run queued it again
        t0 = time.time()
        result = train(config, callbacks, out_dir=store.run_dir(run_id), split=split, resume=resume)
    except Exception as exc:  # a run must never stay 'running'
        msg, details = _failure_message(store, run_id, config, exc)
        record_failure(store, run_id, msg, details)
        return None
    finally:
        beating.set()
    summary = result.to_dict()
    summary.pop("history", None)
    summary["concurrent_runs"] = _concurrent_runs(store, run_id, t0)
    summary["shared_machine"] = bool(summary["shared_machine"] or summary["concurrent_runs"])
    record_end(store, run_id, result.status, summary=summary)
    return result


def _disk_full(store: RunStore, run_id: str, config: TrainConfig) -> DiskFull:
    """The one-line failure of a run whose store write hit a full disk: its folder, its files' size, the fix."""
    s = (store.get_run(run_id) or {}).get("summary") or {}
    params = int(s.get("trainable_params") or 0) + int(s.get("frozen_params") or 0)
    need = run_bytes_needed(params, epochs=config.epochs) if params else None
    return DiskFull(store.run_dir(run_id), need, free_bytes(store.run_dir(run_id)), run_files_what(config.epochs), RUN_FIX)


def _concurrent_runs(store: RunStore, run_id: str, since: float) -> int:
    """How many other runs of the store trained while this one did (they shared the machine's cores)."""
    now = time.time()
    return sum(
        1
        for r in store.list_runs()
        if r["id"] != run_id and r.get("started") and r["started"] < now and (r["status"] == "running" or (r.get("finished") or 0) > since)
    )


def _failure_message(store: RunStore, run_id: str, config: TrainConfig, exc: BaseException) -> tuple[str, str | None]:
    """One line for the run's error, and the traceback for its log unless the error is expected."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_disk_full(exc):  # one line naming the folder, the space and the fix; even the record survives it
        return str(exc if isinstance(exc, DiskFull) else _disk_full(store, run_id, config)), None
    if isinstance(exc, UserError):  # expected: the message names the value and the fix
        return msg, None
    details = "".join(traceback.format_exception(exc))
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        return (
            f"Out of memory while training (batch size {config.batch_size}, image size "
            f"{config.image_size or 'the model default'}). Lower the batch size or the image size and start again."
        ), details
    return f"{type(exc).__name__}: {msg}", details


def _run_distributed(store: RunStore, run_id: str, nproc: int) -> None:
    """Train ``run_id`` with torchrun over ``nproc`` processes; rank 0 writes the store."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tl_dashboard.worker",
        "--attach",
        run_id,
        "--runs-dir",
        str(store.root.resolve()),
    ]
    store.log(run_id, "info", f"Launching {nproc} processes with torchrun (DistributedDataParallel).")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    run = store.get_run(run_id)
    if run and run["status"] == "running":  # a rank died before rank 0 recorded the end
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        store.log(run_id, "error", "\n".join(tail))
        store.finish_run(run_id, "failed", error=f"torchrun exited with status {proc.returncode}: {' '.join(tail)[-300:]}")
    return None


def submit_run(
    store: RunStore, config: TrainConfig, *, label: str = "", group_id: str | None = None, start: bool = True, workspace: str | None = None
) -> str:
    """Queue a run (owned by ``workspace``, its data set recorded) and make sure a worker will pick it up."""
    from .datasets import dataset_record

    run_id = store.create_run(
        config.to_dict(), label=label, group_id=group_id, workspace=workspace, dataset=dataset_record(store, config.data_dir)
    )
    if start:
        start_worker(store)
    return run_id


def _workers_dir(store: RunStore) -> Path:
    d = store.root / "workers"
    d.mkdir(exist_ok=True)
    return d


def live_workers(store: RunStore) -> list[int]:
    """Pids of worker processes of this store that are alive (starting, training or looking for work)."""
    from .runs import _pid_alive

    alive = []
    for f in _workers_dir(store).iterdir():
        if f.name.isdigit() and _pid_alive(int(f.name)):
            alive.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return alive


def _free_gpu(store: RunStore) -> int | None:
    """A GPU no live worker holds, when runs default to one per GPU (several GPUs, TL_MAX_RUNNING unset)."""
    from .fairqueue import default_max_running

    n = default_max_running()
    if os.environ.get("TL_MAX_RUNNING") or n < 2:
        return None
    held = set()
    for pid in live_workers(store):
        try:
            held.add((_workers_dir(store) / str(pid)).read_text().strip())
        except OSError:  # it just exited
            pass
    return next((i for i in range(n) if str(i) not in held), None)


def start_worker(store: RunStore) -> subprocess.Popen | None:
    """Start a worker process in its own session if queued runs need one.

    A worker that is still starting (importing torch can take seconds) counts as alive, so
    polling pages never start a crowd of them; at most ``max_running()`` workers run at once.
    """
    store.mark_dead_runs()
    queued = len(store.list_runs("queued"))
    if not queued or len(live_workers(store)) >= max_running():
        return None
    if free_bytes(store.root) < MARGIN_BYTES:  # a full disk: queued runs wait for space, no worker to crash
        return None
    env = {k: v for k, v in os.environ.items() if k != "TL_ADMIN_PASSWORD"}  # a worker needs no secret
    env["PYTHONUNBUFFERED"] = "1"
    gpu = _free_gpu(store)
    if gpu is not None:
        env["TL_WORKER_GPU"] = str(gpu)
    with open(store.root / "worker.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "tl_dashboard.worker", "--runs-dir", str(store.root.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=os.getcwd(),
        )
    (_workers_dir(store) / str(proc.pid)).write_text("" if gpu is None else str(gpu))
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it exits: no zombies
    return proc


def request_stop(store: RunStore, run_id: str) -> str:
    """Stop a run: running -> stops after the current batch with a final checkpoint; queued -> cancelled."""
    return store.request_stop(run_id)


_REAPED: dict[str, float] = {}  # store root -> when this process last reaped it (time.monotonic())


def reap(store: RunStore, at_most_every: float = 0.0) -> list[str]:
    """Mark runs whose worker died as interrupted, and restart the queue if it stalled.

    ``at_most_every``: skip if this process reaped the same store less than that many seconds ago
    (the live views of a class of thirty poll every 2 s; one check every few seconds serves them all).
    """
    key, now = str(store.root), time.monotonic()
    if at_most_every > 0 and now - _REAPED.get(key, -math.inf) < at_most_every:
        return []
    _REAPED[key] = now
    dead = store.mark_dead_runs()
    start_worker(store)  # no-op unless runs are queued and no worker is alive to take them
    return dead


def worker_loop(store: RunStore) -> int:
    """Claim and train queued runs until none is left; return how many ran."""
    host, pid, n = socket.gethostname(), os.getpid(), 0
    marker = _workers_dir(store) / str(pid)
    mark = os.environ.get("TL_WORKER_GPU", "")  # the GPU this worker trains on, for start_worker's choice
    marker.write_text(mark)
    while True:
        run = store.claim_next(pid, host, max_running())
        if run is None:
            # Unregister, then look once more: a run queued meanwhile either sees no live
            # worker and starts one, or is found by this last look.
            marker.unlink(missing_ok=True)
            run = store.claim_next(pid, host, max_running())
            if run is None:
                return n
            marker.write_text(mark)
        store.log(run["id"], "info", f"Started by worker pid {pid} on {host}.")
        run_training(store, run["id"])
        n += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tl_dashboard.worker", description="Train queued runs, then exit.")
    ap.add_argument("--runs-dir", type=Path, default=None)
    ap.add_argument("--attach", default=None, help="(under torchrun) train this already-running run")
    args = ap.parse_args(argv)
    store = RunStore(args.runs_dir)
    if args.attach:
        if int(os.environ.get("RANK", "0")) == 0:
            run_training(store, args.attach)
        else:  # other ranks train their shards; only rank 0 writes the store
            train(TrainConfig.from_dict(store.get_run(args.attach)["config"]))
        return 0
    worker_loop(store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
