"""The run database can be rebuilt: each run's folder keeps a record, a damaged ``runs.db`` is set aside.

``runs.db`` is an index. What is needed to list a run again lives in its folder too, next to
the checkpoint: ``config.json`` and ``run.json`` (the run's row: label, status, times, summary,
error, owner..., its epoch history and its per-step curve thinned to at most
:data:`MAX_STEPS_KEPT` points), rewritten atomically when the run is created, starts, ends each
epoch and ends.

Opening a store whose database is damaged (truncated, not SQLite at all) or missing while run
folders exist moves the file aside as ``runs.db.damaged-<time>`` (never deletes it), salvages
every table the damaged file still reads in full, and lists each run folder again from its
record. A notice says so once (:meth:`RunStore.pop_notices`); ``tl-dashboard runs --repair``
does the same on request.

What a rebuild cannot bring back (when the damaged file no longer reads): the per-step curve
beyond the thinned copy, and the run log (a line saying the run was rebuilt replaces it).

Example:
    >>> store = RunStore("runs")        # repairs on open if runs.db is damaged  # doctest: +SKIP
    >>> repair_store(store, "on request").message  # doctest: +SKIP
    'Rebuilt the run database from 3 run folders ...'
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .storage import MARGIN_BYTES, DiskFull, atomic_write_json, disk_full_from, free_bytes, is_disk_full, remove_temp_files

if TYPE_CHECKING:
    from .runs import RunStore

__all__ = [
    "RECORD_FILE",
    "MAX_STEPS_KEPT",
    "RepairReport",
    "write_record",
    "read_record",
    "run_folders",
    "check_database",
    "open_store",
    "repair_store",
    "record_failure",
    "record_end",
    "release_reserve",
]

log = logging.getLogger("tl_dashboard.records")

RECORD_FILE = "run.json"
MAX_STEPS_KEPT = 400
RESERVE_FILE = ".space-reserve"
RESERVE_BYTES = 1024 * 1024  # freed to record a failure when the disk is full
_CHECKED: set[tuple[str, int]] = set()  # databases this process already checked (path, inode)
_CHECK_LOCK = threading.Lock()


@dataclass
class RepairReport:
    """What a repair did: where the damaged file went, how many runs came back, what was lost."""

    reason: str
    moved_to: list[Path] = field(default_factory=list)
    runs: int = 0
    salvaged: list[str] = field(default_factory=list)
    lost: str = ""

    @property
    def message(self) -> str:
        kept = f" The old file is kept as {self.moved_to[0].name}." if self.moved_to else ""
        salv = f" Read back from it: {', '.join(self.salvaged)}." if self.salvaged else ""
        return (
            f"The run database was {self.reason}: rebuilt it from {self.runs} run folder(s).{kept}{salv}"
            f"{' ' + self.lost if self.lost else ''}"
        )


# -- the record in each run folder ---------------------------------------------------------------
def _thinned_steps(con: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    n, last = con.execute("SELECT COUNT(*), MAX(step) FROM step_metrics WHERE run_id=?", (run_id,)).fetchone()
    if not n:
        return []
    every = -(-n // MAX_STEPS_KEPT)
    rows = con.execute(
        "SELECT step, epoch, loss, lr, time FROM step_metrics WHERE run_id=? AND (step % ? = 0 OR step = ?) ORDER BY step",
        (run_id, every, last),
    ).fetchall()
    return [dict(r) for r in rows]


def run_record(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """The run's row (every column), its epochs and its thinned step curve, as stored now."""
    con = store._connect()
    try:
        row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        run = dict(row)
        for k, v in run.items():  # JSON columns (config, summary, progress, ...) as objects
            if isinstance(v, str) and v[:1] in "{[":
                with contextlib.suppress(ValueError):
                    run[k] = json.loads(v)
        epochs = [dict(r) for r in con.execute("SELECT * FROM epoch_metrics WHERE run_id=? ORDER BY epoch", (run_id,))]
        return {"format": 1, "run": run, "epochs": epochs, "steps": _thinned_steps(con, run_id), "steps_thinned_to": MAX_STEPS_KEPT}
    finally:
        con.close()


def write_record(store: RunStore, run_id: str) -> bool:
    """Rewrite ``<run folder>/run.json`` from the database; False (never an exception) if it could not."""
    folder = store.run_dir(run_id)
    if not folder.is_dir():
        return False
    try:
        rec = run_record(store, run_id)
        if rec is None:
            return False
        atomic_write_json(folder / RECORD_FILE, rec)
        return True
    except (OSError, sqlite3.Error, DiskFull):  # the database stays the source of truth
        return False


def read_record(folder: Path) -> dict[str, Any] | None:
    """A run folder's record: ``run.json``, else one pieced together from config/summary.json; None if none."""

    def load(name: str) -> Any:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None

    rec = load(RECORD_FILE)
    if isinstance(rec, dict) and isinstance(rec.get("run"), dict):
        return rec
    config = load("config.json")
    if not isinstance(config, dict):
        return None
    summary = load("summary.json") or {}
    status = summary.pop("status", None) or ("stopped" if (folder / "model.safetensors").exists() else "interrupted")
    created = _created_from_id(folder.name) or folder.stat().st_mtime
    run = {
        "id": folder.name,
        "label": "",
        "status": status,
        "created": created,
        "config": config,
        "summary": summary,
        "error": summary.pop("error", None),
    }
    return {"format": 1, "run": run, "epochs": [], "steps": []}


def _created_from_id(run_id: str) -> float | None:
    try:
        return time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return None


def run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that hold a run (a ``config.json``), oldest name first."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file())
    except OSError:
        return []


# -- checking and repairing the database ---------------------------------------------------------
def check_database(db_path: Path, full: bool = True) -> str | None:
    """Why ``db_path`` cannot serve as the run index ("truncated", "not an SQLite database"...), or None.

    The file is only ever read through SQLite, never opened with ``open()``: closing any other
    descriptor of it drops every POSIX lock this process holds on it (SQLite's included), so
    another process then takes itself for the last connection, checkpoints and deletes the
    ``-wal``/``-shm`` still in use here, and a live store ends up corrupt.
    """
    try:
        if os.path.getsize(db_path) == 0:
            return None if not full else "empty (0 bytes)"
    except FileNotFoundError:
        return "missing"
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        (pages,) = con.execute("PRAGMA page_count").fetchone()
        if os.path.getsize(db_path) < page_size * pages and not _wal_bytes(db_path):
            return f"truncated ({os.path.getsize(db_path)} of {page_size * pages} bytes)"
        if full:
            res = [r[0] for r in con.execute("PRAGMA quick_check(5)")]
            if res != ["ok"]:
                return "damaged (" + "; ".join(res)[:200] + ")"
    except sqlite3.DatabaseError as exc:
        if is_disk_full(exc):
            return None  # cannot check it now (no room for SQLite's -shm file); checked at the next open
        if isinstance(exc, sqlite3.OperationalError) and not any(w in str(exc).lower() for w in ("malformed", "not a database", "corrupt")):
            raise  # locked, busy, no permission...: not damage, never a reason to move the file aside
        return "not an SQLite database" if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB" else f"unreadable ({exc})"
    finally:
        con.close()
    return None


def _wal_bytes(db_path: Path) -> int:
    """Size of the database's write-ahead log (``-wal``); 0 when there is none."""
    try:
        return os.path.getsize(db_path.with_name(db_path.name + "-wal"))
    except OSError:
        return 0


def read_only_connection(db_path: Path, exc: sqlite3.OperationalError) -> sqlite3.Connection:
    """A read-only connection when the disk is too full for SQLite's shared-memory file (``-shm``).

    Correct only when no write-ahead log is pending (no ``-wal`` with content): then the database
    file holds every committed write and ``immutable=1`` reads it without the ``-shm`` file.
    Otherwise ``exc`` is raised as :class:`DiskFull`, or as it is when the disk is not full.
    """
    if not is_disk_full(exc):
        raise exc
    if db_path.exists() and not _wal_bytes(db_path):
        log.info("disk full under %s: reading the run database read-only", db_path.parent)
        return sqlite3.connect(f"file:{db_path}?immutable=1", uri=True, isolation_level=None, factory=_ReadOnlyOnFullDisk)
    raise disk_full_from(exc, db_path.parent, None, "opening the run database") from None


class _ReadOnlyOnFullDisk(sqlite3.Connection):
    """Reads work; a write fails as the full disk it is ("database or disk is full"), not as "read-only"."""

    def _run(self, method: str, *args: Any) -> Any:
        try:
            return getattr(super(), method)(*args)
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc):
                raise sqlite3.OperationalError("database or disk is full (the run database is read-only until space is freed)") from None
            raise

    def execute(self, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        return self._run("execute", *args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        return self._run("executemany", *args)

    def executescript(self, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        return self._run("executescript", *args)


@contextlib.contextmanager
def _repair_lock(root: Path) -> Iterator[None]:
    with open(root / ".runs.db.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_store(store: RunStore) -> str | None:
    """Make ``store``'s database usable: check it once per process, repair it if damaged or missing.

    Returns the repair message, or None when nothing was wrong. Raises :class:`DiskFull` when
    the database cannot even be created for lack of space.
    """
    db = store.db_path
    reason = None
    if not db.exists():
        if run_folders(store.root):
            reason = "missing"
    else:
        key = (str(db.resolve()), db.stat().st_ino)
        with _CHECK_LOCK:  # a class of sessions opening the store at once: one check, not thirty
            if key not in _CHECKED:
                reason = check_database(db)
                if reason and reason.startswith("empty") and not run_folders(store.root):
                    reason = None  # a store being created right now
                if reason is None and free_bytes(store.root) > RESERVE_BYTES:  # else it may not have been checked
                    _CHECKED.add(key)
    notice = None
    if reason:
        with _repair_lock(store.root):
            again = check_database(db) if db.exists() else ("missing" if run_folders(store.root) else None)
            if again:  # nobody repaired it meanwhile
                notice = repair_store(store, again).message
    _create_schema(store)
    with contextlib.suppress(OSError, sqlite3.Error):
        _settle_unrecorded_ends(store)
    _ensure_reserve(store.root)
    return notice


def _create_schema(store: RunStore) -> None:
    try:
        store._create_schema()
    except sqlite3.OperationalError as exc:
        if "read-only until space" in str(exc) and store.db_path.exists():
            return  # read-only on a full disk: the schema is there, new columns come at the next open
        if is_disk_full(exc):
            raise disk_full_from(exc, store.root, None, "the run database") from None
        raise


def _move_aside(db: Path, tag: str) -> list[Path]:
    stamp = tag + "-" + time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = db.with_name(db.name + suffix)
        if src.exists():
            dest = db.with_name(f"{db.name}.{stamp}{suffix}")
            n = 1
            while dest.exists():
                dest = db.with_name(f"{db.name}.{stamp}.{n}{suffix}")
                n += 1
            os.replace(src, dest)
            moved.append(dest)
    return moved


def repair_store(store: RunStore, reason: str | None = None) -> RepairReport:
    """Move ``runs.db`` aside (if present) and rebuild the index from the damaged file and the run folders.

    Args:
        reason: what is wrong with it ("truncated ...", "not an SQLite database"); None: on request.
    """
    report = RepairReport(reason=reason or "repaired on request")
    report.moved_to = _move_aside(store.db_path, "damaged" if reason else "before-repair")
    _create_schema(store)
    if report.moved_to:
        padded = _padded_copy(report.moved_to[0])
        try:
            report.salvaged = _salvage(store, padded or report.moved_to[0])
        finally:
            if padded:
                padded.unlink(missing_ok=True)
    with store._tx(immediate=True) as con:
        for folder in run_folders(store.root):
            rec = read_record(folder)
            if rec and _restore_run(con, rec, folder.name):
                report.runs += 1
    lost = [
        what
        for table, what in (("run_log", "the run log"), ("step_metrics", f"per-step curves beyond {MAX_STEPS_KEPT} points per run"))
        if table not in report.salvaged
    ]
    if lost:
        report.lost = f"Not recoverable from run folders, where the damaged file no longer reads: {' and '.join(lost)}."
    store._notify(report.message)
    log.warning(report.message)
    for folder in run_folders(store.root):
        remove_temp_files(folder)
    return report


def _padded_copy(damaged: Path) -> Path | None:
    """A truncated file padded (sparsely) back to the size its header records, so SQLite reads its
    surviving pages; None when it is not truncated or the copy does not fit."""
    try:
        with open(damaged, "rb") as fh:
            head = fh.read(100)
        if not head.startswith(b"SQLite format 3\x00"):
            return None
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        want, have = page_size * int.from_bytes(head[28:32], "big"), damaged.stat().st_size
        if want <= have or free_bytes(damaged.parent) < have + MARGIN_BYTES:
            return None
        copy = damaged.with_name(f".{damaged.name}.salvage.{os.getpid()}.tmp")
        shutil.copyfile(damaged, copy)
        with open(copy, "r+b") as fh:
            fh.truncate(want)
        return copy
    except OSError:
        return None


def _salvage(store: RunStore, damaged: Path) -> list[str]:
    """Copy what the damaged file still reads: whole tables, else each table's rows up to the first bad page.

    Returns:
        The tables read in full by name, the others as ``"run_log (1234 rows)"``.
    """
    salvaged = []
    with contextlib.suppress(OSError):
        if os.path.samefile(damaged, store.db_path):  # copying a table into itself would never end
            return []
    con = store._connect()
    try:
        try:
            con.execute("ATTACH DATABASE ? AS old", (f"file:{damaged}?mode=ro",))
            tables = [r[0] for r in con.execute("SELECT name FROM main.sqlite_master WHERE type='table'")]
        except sqlite3.DatabaseError:
            return []
        for table in tables:
            got = _salvage_table(con, table)
            if got is not None:
                salvaged.append(table if got < 0 else f"{table} ({got} rows)")
        with contextlib.suppress(sqlite3.Error):
            con.execute("DETACH DATABASE old")
    finally:
        con.close()
    return salvaged


def _salvage_table(con: sqlite3.Connection, table: str) -> int | None:
    """-1: copied in full; N: N rows copied (in rowid order) before an unreadable page; None: nothing.

    Read in chunks of rowids, never in one statement: after a "malformed" error SQLite may refuse
    every later read of the attached file, and the rows before the bad page are worth keeping.
    Each chunk is written in one transaction (row by row, every row was a commit of its own). A
    damaged tree can hand rows back out of rowid order, even the same chunk again and again: only
    rows past the last one copied are taken, so ``last`` rises with every chunk and the loop ends
    (at most one chunk per row the file holds); a table that did so counts as read in part.
    """
    try:
        cols = [r[1] for r in con.execute(f"PRAGMA main.table_info({table})")]
        old_cols = {r[1] for r in con.execute(f"PRAGMA old.table_info({table})")}
    except sqlite3.DatabaseError:
        return None
    names = [c for c in cols if c in old_cols]
    if not names:
        return None
    select = f"SELECT rowid, {','.join(names)} FROM old.{table} WHERE rowid > ? ORDER BY rowid LIMIT 2000"
    insert = f"INSERT OR IGNORE INTO main.{table} ({','.join(names)}) VALUES ({','.join('?' * len(names))})"
    last, copied, in_order = -(2**63), 0, True
    while True:
        try:
            rows = con.execute(select, (last,)).fetchall()
        except sqlite3.DatabaseError:
            return copied or None
        fresh = []
        for row in rows:
            if row[0] > last:
                fresh.append(tuple(row)[1:])
                last = row[0]
        in_order = in_order and len(fresh) == len(rows)
        if not fresh:
            return -1 if in_order else (copied or None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(insert, fresh)
            con.execute("COMMIT")
        except sqlite3.DatabaseError:
            if con.in_transaction:
                con.execute("ROLLBACK")
            return copied or None
        copied += len(fresh)


def _insert(con: sqlite3.Connection, table: str, row: dict[str, Any], have: set[str]) -> None:
    cols = [c for c in row if c in have]
    vals = [json.dumps(row[c], default=str) if isinstance(row[c], (dict, list)) else row[c] for c in cols]
    con.execute(f"INSERT OR IGNORE INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", vals)


def _restore_run(con: sqlite3.Connection, rec: dict[str, Any], run_id: str) -> bool:
    run = {**rec["run"], "id": run_id}
    if con.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
        pass  # salvaged from the damaged file: that row is at least as recent as the record
    else:
        run.setdefault("created", time.time())
        run.setdefault("config", {})
        _insert(con, "runs", run, {r[1] for r in con.execute("PRAGMA table_info(runs)")})
        con.execute(
            "INSERT INTO run_log (run_id, time, level, message) VALUES (?,?,?,?)",
            (
                run_id,
                time.time(),
                "warning",
                "Listed again from its folder after the run database was rebuilt; the log before this line is lost.",
            ),
        )
    for table, key in (("epoch_metrics", "epochs"), ("step_metrics", "steps")):
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        for row in rec.get(key) or []:  # fills what the damaged file lost; rows read back from it stay
            _insert(con, table, {**row, "run_id": run_id}, have)
    return True


def _settle_unrecorded_ends(store: RunStore) -> None:
    """A run still 'running' in the index whose folder records a final status (the database could not be
    written when it ended, e.g. on a full disk): take the folder's status."""
    from .runs import FINAL_STATUSES

    for row in store._query("SELECT id FROM runs WHERE status IN ('queued', 'running')"):
        rec = read_record(store.run_dir(row["id"])) if (store.run_dir(row["id"]) / RECORD_FILE).exists() else None
        run = (rec or {}).get("run") or {}
        if run.get("status") in FINAL_STATUSES:
            with store._tx() as con:
                con.execute(
                    "UPDATE runs SET status=?, finished=?, error=? WHERE id=? AND status IN ('queued','running')",
                    (run["status"], run.get("finished") or time.time(), run.get("error"), row["id"]),
                )


# -- a failure record that survives a full disk ----------------------------------------------------
def _ensure_reserve(root: Path) -> None:
    path = root / RESERVE_FILE
    with contextlib.suppress(OSError):
        if not path.exists() and free_bytes(root) > 8 * RESERVE_BYTES:
            tmp = root / f"{RESERVE_FILE}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(b"\0" * RESERVE_BYTES)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)


def release_reserve(root: Path) -> bool:
    """Delete the store's reserve file (room to record a failure on a full disk); True if there was one."""
    try:
        (root / RESERVE_FILE).unlink()
        return True
    except OSError:
        return False


def record_failure(store: RunStore, run_id: str, message: str, details: str | None = None) -> None:
    """End ``run_id`` as failed with ``message``, even on a full disk; never raises.

    Temporary files of the run are removed first. If the database cannot be written, the store's
    reserve file is released and it is tried again; if that fails too, the run folder's ``run.json``
    records the failure and the next open of the store takes it from there.
    """
    remove_temp_files(store.run_dir(run_id))
    record_end(store, run_id, "failed", error=message, details=details)


def record_end(
    store: RunStore,
    run_id: str,
    status: str,
    *,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
    details: str | None = None,
) -> None:
    """:meth:`RunStore.finish_run` that survives a full disk (see :func:`record_failure`); never raises."""
    for attempt in range(2):
        try:
            if details:
                store.log(run_id, "error", details)
            if error:
                store.log(run_id, "error", error)
            store.finish_run(run_id, status, summary=summary, error=error)
            return
        except (OSError, sqlite3.Error) as exc:
            log.info("could not record the end of run %s in the database: %s", run_id, exc)
            details = None
            if attempt == 0 and not (is_disk_full(exc) and release_reserve(store.root)):
                break
    _write_status_file(store.run_dir(run_id), status, error)


def _write_status_file(folder: Path, status: str, error: str | None) -> None:
    rec = read_record(folder) or {"format": 1, "run": {"id": folder.name}, "epochs": [], "steps": []}
    rec["run"].update(status=status, error=error, finished=time.time())
    try:
        atomic_write_json(folder / RECORD_FILE, rec)
    except (OSError, DiskFull) as exc:
        log.warning("could not record the failure in %s either: %s", folder, exc)
