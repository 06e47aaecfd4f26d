"""RunStore: the contract between the trainer and everything that watches it.

One SQLite database in WAL mode (``runs.db``) holds runs, per-step and per-epoch metrics and a
log; each run also has a folder for its artifacts (``model.safetensors``, ``labels.json``,
``config.json``, ``summary.json``). Readers never block the writer (WAL), every write is one
short transaction, and artifact files are written to a temporary name and renamed into place,
so a kill in the middle of a write leaves the previous state intact.

The location is ``./runs`` unless ``TL_RUNS_DIR`` or an explicit ``root`` says otherwise.

Example:
    >>> store = RunStore("/tmp/tl-runs")
    >>> run_id = store.create_run({"model": "resnet18"}, label="demo")
    >>> store.get_run(run_id)["status"]
    'queued'
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .storage import atomic_write_bytes, atomic_write_json  # re-exported: the store's writers

__all__ = ["RunStore", "default_runs_dir", "ACTIVE_STATUSES", "FINAL_STATUSES", "atomic_write_bytes", "atomic_write_json"]

CHECKPOINT = "model.safetensors"  # the trained weights in a run folder (engine.save_checkpoint writes it)

ACTIVE_STATUSES = ("queued", "running")


class RunBusy(UserError, ValueError):
    """The run is queued or running (or otherwise in the wrong state) for what was asked."""


FINAL_STATUSES = ("finished", "stopped", "failed", "interrupted", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    pid INTEGER,
    host TEXT,
    heartbeat REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    group_id TEXT
);
CREATE TABLE IF NOT EXISTS step_metrics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch REAL NOT NULL,
    loss REAL, lr REAL, time REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_loss REAL, val_acc REAL,
    lr REAL, images_per_sec REAL, seconds REAL, time REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS run_log (
    run_id TEXT NOT NULL, time REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_log_run ON run_log(run_id);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    updated REAL, state TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS datasets (
    path TEXT PRIMARY KEY, workspace TEXT, name TEXT NOT NULL, classes INTEGER, images INTEGER,
    fingerprint TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS store_notices (time REAL NOT NULL, message TEXT NOT NULL, shown INTEGER NOT NULL DEFAULT 0);
"""

# Columns added after a store was first made: {table: {column: declaration}}. Opening an older
# store adds the missing ones (ALTER TABLE ... ADD COLUMN), so a store made by any earlier version
# keeps opening. Add new columns here, never by editing _SCHEMA's CREATE TABLE statements alone.
_ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "runs": {
        "workspace": "TEXT",  # owner (tl_dashboard.workspaces); NULL: made before workspaces, or by the CLI
        "dataset": "TEXT NOT NULL DEFAULT '{}'",  # JSON: name, path, images, classes, fingerprint
    }
}


def _add_missing_columns(con: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def default_runs_dir() -> Path:
    """``$TL_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("TL_RUNS_DIR") or "runs")


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class RunStore:
    """Runs, their metrics and artifacts under one folder.

    Args:
        root: folder for ``runs.db`` and one sub-folder per run; created if missing.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "runs.db"
        from .records import open_store

        # A damaged or missing runs.db is moved aside and rebuilt from the run folders (records.py).
        self.repair_notice = open_store(self)

    def _create_schema(self) -> None:
        con = self._connect()
        try:
            con.executescript(_SCHEMA)
            _add_missing_columns(con)
        finally:
            con.close()

    def _record(self, run_id: str, every: float = 0.0) -> None:
        """Rewrite the run folder's ``run.json`` (what a rebuild of the index lists it from).

        ``every``: skip if this store rewrote it less than that many seconds ago (fast epochs).
        """
        from .records import write_record

        last = self.__dict__.setdefault("_recorded", {})
        if every and time.monotonic() - last.get(run_id, -every) < every:
            return
        last[run_id] = time.monotonic()
        write_record(self, run_id)

    def _notify(self, message: str) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO store_notices (time, message) VALUES (?, ?)", (time.time(), message))

    def pop_notices(self) -> list[str]:
        """Notices about the store (e.g. "the run database was rebuilt") not shown yet; each is returned once."""
        try:
            if not self._query("SELECT 1 FROM store_notices WHERE shown=0 LIMIT 1"):
                return []  # the usual case: no write
            with self._tx(immediate=True) as con:
                rows = con.execute("SELECT rowid, message FROM store_notices WHERE shown=0 ORDER BY rowid").fetchall()
                con.execute("UPDATE store_notices SET shown=1 WHERE shown=0")
        except sqlite3.OperationalError:  # read-only on a full disk (or an old schema): say it next time
            return []
        return [r["message"] for r in rows]

    # -- plumbing ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:  # a full disk: read-only (records.py), so listing still works
            from .records import read_only_connection

            con.close()
            con = read_only_connection(self.db_path, exc)
            con.row_factory = sqlite3.Row
            return con
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # not when COMMIT itself was interrupted after it ended the transaction
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def has_checkpoint(self, run_id: str) -> bool:
        """Whether the run has saved a model (``model.safetensors``, written after its first epoch)."""
        return (self.run_dir(run_id) / CHECKPOINT).is_file()

    # -- runs -------------------------------------------------------------------------------
    def create_run(
        self,
        config: dict[str, Any],
        *,
        label: str = "",
        group_id: str | None = None,
        status: str = "queued",
        workspace: str | None = None,
        dataset: dict[str, Any] | None = None,
    ) -> str:
        """Add a run (queued by default) and its folder with ``config.json``; return its id.

        ``workspace`` owns the run (None: nobody, e.g. the CLI); ``dataset`` describes its data.
        """
        run_id = _new_run_id()
        while self.run_dir(run_id).exists():
            run_id = _new_run_id()
        self.run_dir(run_id).mkdir(parents=True)
        atomic_write_json(self.run_dir(run_id) / "config.json", config)
        with self._tx() as con:
            con.execute(
                "INSERT INTO runs (id, label, status, created, config, group_id, workspace, dataset) VALUES (?,?,?,?,?,?,?,?)",
                (run_id, label, status, time.time(), json.dumps(config), group_id, workspace, json.dumps(dataset or {})),
            )
        self._record(run_id)
        return run_id

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for k in ("config", "summary", "progress", "dataset"):
            d[k] = json.loads(d[k]) if d.get(k) else {}
        d["stop_requested"] = bool(d.get("stop_requested"))
        return d

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM runs WHERE id=?", (run_id,))
        return self._row(rows[0]) if rows else None

    def list_runs(self, status: str | tuple[str, ...] | None = None, group_id: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first, optionally filtered by status or group (a sweep)."""
        sql, args = "SELECT * FROM runs", []
        where = []
        if status:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += list(statuses)
        if group_id:
            where.append("group_id=?")
            args.append(group_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, rowid DESC"
        return [self._row(r) for r in self._query(sql, tuple(args))]

    def claim_next(self, pid: int, host: str, max_running: int = 1) -> dict[str, Any] | None:
        """Atomically move the next queued run to running for this worker, if a slot is free.

        The next run is the fair queue's (:func:`tl_dashboard.fairqueue.fair_order`): round-robin
        across workspaces, oldest first within one.
        """
        from .fairqueue import fair_order

        with self._tx(immediate=True) as con:
            running = con.execute("SELECT COUNT(*) FROM runs WHERE status='running'").fetchone()[0]
            if running >= max_running:
                return None
            order = fair_order(*self._queue_rows(con))
            if not order:
                return None
            now = time.time()
            con.execute(
                "UPDATE runs SET status='running', started=?, pid=?, host=?, heartbeat=? WHERE id=? AND status='queued'",
                (now, pid, host, now, order[0]),
            )
        self._record(order[0])
        return self.get_run(order[0])

    def _queue_rows(self, con: sqlite3.Connection | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """(queued runs as ``{id, workspace, created}`` oldest first, ``{workspace: last start}``)."""
        own = con is None
        con = con or self._connect()
        try:
            queued = [dict(r) for r in con.execute("SELECT id, workspace, created FROM runs WHERE status='queued' ORDER BY created, rowid")]
            last = {
                r[0]: r[1]
                for r in con.execute(
                    "SELECT COALESCE(workspace, ''), MAX(started) FROM runs WHERE started IS NOT NULL GROUP BY COALESCE(workspace, '')"
                )
            }
        finally:
            if own:
                con.close()
        return queued, last

    def mark_running(self, run_id: str, pid: int, host: str) -> None:
        now = time.time()
        with self._tx() as con:
            con.execute(
                "UPDATE runs SET status='running', started=COALESCE(started, ?), pid=?, host=?, heartbeat=? WHERE id=?",
                (now, pid, host, now, run_id),
            )
        self._record(run_id)

    def heartbeat(self, run_id: str, progress: dict[str, Any] | None = None) -> None:
        with self._tx() as con:
            if progress is None:
                con.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run_id))
            else:
                con.execute("UPDATE runs SET heartbeat=?, progress=? WHERE id=?", (time.time(), json.dumps(progress), run_id))

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None, error: str | None = None) -> None:
        """Record a final status; ``summary`` is merged into the stored one and saved as JSON too."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"Unknown final status {status!r}; use one of {FINAL_STATUSES}.")
        run = self.get_run(run_id)
        merged = {**(run["summary"] if run else {}), **(summary or {})}
        with self._tx() as con:
            con.execute(
                "UPDATE runs SET status=?, finished=?, summary=?, error=? WHERE id=?",
                (status, time.time(), json.dumps(merged, default=str), error, run_id),
            )
        if self.run_dir(run_id).exists():
            atomic_write_json(self.run_dir(run_id) / "summary.json", {"status": status, "error": error, **merged})
        self._record(run_id)

    def requeue_from(self, run_id: str, epoch: int, step: int) -> None:
        """Queue a ended run again to resume after ``epoch``: its metrics after that point are dropped."""
        with self._tx(immediate=True) as con:
            con.execute(
                "UPDATE runs SET status='queued', finished=NULL, error=NULL, pid=NULL, heartbeat=NULL, stop_requested=0 WHERE id=?",
                (run_id,),
            )
            con.execute("DELETE FROM epoch_metrics WHERE run_id=? AND epoch>?", (run_id, epoch))
            con.execute("DELETE FROM step_metrics WHERE run_id=? AND step>?", (run_id, step))
        self._record(run_id)

    def update_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        self._merge_json(run_id, "summary", summary)
        self._record(run_id)

    def update_dataset(self, run_id: str, dataset: dict[str, Any]) -> None:
        """Merge ``dataset`` (name, path, images, classes, fingerprint) into the run's data set record."""
        self._merge_json(run_id, "dataset", dataset)

    def _merge_json(self, run_id: str, column: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the JSON object in ``column`` ("summary" or "dataset") of a run."""
        assert column in ("summary", "dataset"), column  # a column name, never user input
        run = self.get_run(run_id)
        merged = {**(run[column] if run else {}), **changes}
        with self._tx() as con:
            con.execute(f"UPDATE runs SET {column}=? WHERE id=?", (json.dumps(merged, default=str), run_id))

    def request_stop(self, run_id: str) -> str:
        """Ask a run to stop: a running run stops after its current batch; a queued one is cancelled.

        Returns the run's status after the request.
        """
        status = self._request_stop(run_id)
        if status == "cancelled":
            self._record(run_id)
        return status

    def _request_stop(self, run_id: str) -> str:
        with self._tx(immediate=True) as con:
            row = con.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row["status"] == "queued":
                con.execute("UPDATE runs SET status='cancelled', finished=? WHERE id=?", (time.time(), run_id))
                return "cancelled"
            if row["status"] == "running":
                con.execute("UPDATE runs SET stop_requested=1 WHERE id=?", (run_id,))
            return row["status"]

    def stop_requested(self, run_id: str) -> bool:
        rows = self._query("SELECT stop_requested FROM runs WHERE id=?", (run_id,))
        return bool(rows and rows[0]["stop_requested"])

    def delete_run(self, run_id: str) -> None:
        """Delete a finished run and its folder. Active runs are refused (stop them first)."""
        run = self.get_run(run_id)
        if run is None:
            raise KeyError(run_id)
        if run["status"] in ACTIVE_STATUSES:
            raise RunBusy(f"Run {run_id} is {run['status']}; stop it before deleting it.")
        with self._tx() as con:
            for table in ("step_metrics", "epoch_metrics", "run_log"):
                con.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            con.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def mark_dead_runs(self, stale_after: float = 60.0, host: str | None = None) -> list[str]:
        """Mark running runs whose worker is gone as interrupted; return their ids.

        A worker is gone when its pid no longer exists on this host, or its heartbeat is older
        than ``stale_after`` seconds (a worker on another host, or one that hangs).
        """
        import socket

        host = host or socket.gethostname()
        dead: list[tuple[str, str]] = []
        now = time.time()
        for run in self.list_runs("running"):
            reason = None
            if run.get("host") == host and run.get("pid") and not _pid_alive(int(run["pid"])):
                reason = f"the training process (pid {run['pid']}) died without finishing"
            elif run.get("heartbeat") and now - float(run["heartbeat"]) > stale_after:
                reason = f"no heartbeat from the training process for {now - float(run['heartbeat']):.0f} s"
            if reason:
                dead.append((run["id"], reason))
        for run_id, reason in dead:
            with self._tx(immediate=True) as con:
                con.execute(
                    "UPDATE runs SET status='interrupted', finished=?, error=? WHERE id=? AND status='running'", (now, reason, run_id)
                )
            self.log(run_id, "error", f"Run interrupted: {reason}. The last checkpoint (if any) is kept.")
            run = self.get_run(run_id)
            if run and self.run_dir(run_id).exists():
                atomic_write_json(self.run_dir(run_id) / "summary.json", {"status": "interrupted", "error": reason, **run["summary"]})
            self._record(run_id)
        return [r for r, _ in dead]

    # -- metrics and log --------------------------------------------------------------------
    def add_steps(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._tx() as con:
            con.executemany(
                "INSERT OR REPLACE INTO step_metrics (run_id, step, epoch, loss, lr, time) VALUES (?,?,?,?,?,?)",
                [(run_id, r["step"], r["epoch"], r.get("loss"), r.get("lr"), r.get("time", time.time())) for r in rows],
            )

    def add_epoch(self, run_id: str, row: dict[str, Any]) -> None:
        cols = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "seconds")
        with self._tx() as con:
            con.execute(
                f"INSERT OR REPLACE INTO epoch_metrics (run_id, epoch, {', '.join(cols)}, time) VALUES (?,?,{','.join('?' * len(cols))},?)",
                (run_id, row["epoch"], *[row.get(c) for c in cols], time.time()),
            )
        self._record(run_id, every=1.0)  # the run's end always rewrites it

    def steps(self, run_id: str, after: int = -1) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._query(
                "SELECT step, epoch, loss, lr, time FROM step_metrics WHERE run_id=? AND step>? ORDER BY step", (run_id, after)
            )
        ]

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM epoch_metrics WHERE run_id=? ORDER BY epoch", (run_id,))]

    def log(self, run_id: str, level: str, message: str) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO run_log (run_id, time, level, message) VALUES (?,?,?,?)", (run_id, time.time(), level, message))

    def logs(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT time, level, message FROM run_log WHERE run_id=? ORDER BY rowid", (run_id,))]


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id is running on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
