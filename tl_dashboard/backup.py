"""Back up a run store while runs train: the database through SQLite's online backup API, then the run folders.

``tl-dashboard backup DEST`` makes ``DEST`` a complete store: ``DEST/runs.db`` is a consistent
snapshot taken with :meth:`sqlite3.Connection.backup` (safe while a worker writes; it never
copies a half-written page), and ``DEST/<run id>/`` holds each listed run's folder, temporary
files left out. Checkpoints are replaced by atomic rename, so a file copied while a run trains is
a whole checkpoint (of that epoch or the one before). To restore, stop the app and workers and use
``DEST`` as the runs folder (``TL_RUNS_DIR=DEST`` or copy it back in place); a run that was
training when the backup was taken shows as interrupted, with its last checkpoint.

Example:
    >>> report = backup_store(RunStore("runs"), "/backups/runs-2026-11-28")  # doctest: +SKIP
    >>> report.runs, report.integrity
    (12, 'ok')
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .storage import TEMP_SUFFIX, check_free_space, dir_size, disk_full_from, is_disk_full

if TYPE_CHECKING:
    from .runs import RunStore

__all__ = ["BackupError", "BackupReport", "backup_store"]


class BackupError(UserError):
    """The backup cannot be made (destination not empty, inside the store, ...); names the fix."""


@dataclass
class BackupReport:
    dest: Path
    runs: int
    bytes: int
    integrity: str
    seconds: float

    def to_dict(self) -> dict:
        return {
            "dest": str(self.dest),
            "runs": self.runs,
            "bytes": self.bytes,
            "integrity": self.integrity,
            "seconds": round(self.seconds, 3),
        }


def _check_dest(store: RunStore, dest: Path) -> None:
    root = store.root.resolve()
    if dest.resolve() == root or dest.resolve().is_relative_to(root):
        raise BackupError(f"Backup folder {dest} is inside the runs folder {root}; pick a folder outside it.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"Backup folder {dest} is not empty; pick a new or empty folder (nothing is overwritten).")


def _copy_database(store: RunStore, db_dest: Path) -> list[str]:
    """Snapshot ``runs.db`` into ``db_dest`` with the online backup API; return the run ids it lists."""
    tmp = db_dest.with_name(f".{db_dest.name}{TEMP_SUFFIX}")
    src = store._connect()
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=256)  # in steps: a writer waits at most one step
            ids = [r[0] for r in dst.execute("SELECT id FROM runs")]
        finally:
            dst.close()
        tmp.replace(db_dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    return ids


def _ignore_temp(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(TEMP_SUFFIX)]


def _remove_partial(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for p in dest.iterdir():  # it was empty before: everything in it is ours
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def backup_store(store: RunStore, dest: str | Path) -> BackupReport:
    """Copy the store's database (online backup API) and the folders of the runs it lists into ``dest``.

    Args:
        store: the store to back up; runs may be training meanwhile.
        dest: a new or empty folder outside the runs folder.

    Returns:
        A :class:`BackupReport` (``integrity`` is the copy's ``PRAGMA integrity_check``).

    Raises:
        BackupError: ``dest`` is not empty or inside the store.
        DiskFull: ``dest`` has not enough space (checked before copying; a partial copy is removed).
    """
    t0 = time.perf_counter()
    dest = Path(dest).expanduser().absolute()
    _check_dest(store, dest)
    need = dir_size(store.root)
    check_free_space(dest, need, "the backup", fix="pick a folder on a disk with more space, or free some there")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        ids = _copy_database(store, dest / "runs.db")
        for run_id in ids:
            src = store.run_dir(run_id)
            if src.is_dir():
                shutil.copytree(src, dest / run_id, ignore=_ignore_temp)
    except BaseException as exc:
        _remove_partial(dest, created)
        if isinstance(exc, OSError) and is_disk_full(exc) and not isinstance(exc, UserError):
            raise disk_full_from(exc, dest, need, "the backup") from None
        raise
    con = sqlite3.connect(dest / "runs.db")
    try:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    return BackupReport(dest=dest, runs=len(ids), bytes=dir_size(dest), integrity=integrity, seconds=time.perf_counter() - t0)
