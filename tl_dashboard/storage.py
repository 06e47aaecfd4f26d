"""Writing files safely: atomic writes, free-space checks, a named error for a full disk.

Every file the dashboard writes (checkpoints, run records, caches, uploads) goes through
:func:`atomic_write_bytes`, :func:`atomic_write_json` or :func:`atomic_open`: the data is written
to a temporary file next to the target and renamed into place, so a reader sees the old file or
the new one, never half of one. When the write fails (a full disk, a quota, a kill of the
process) the temporary file is removed, so a failed write never keeps the disk full.

A full disk is an expected failure, not a bug: it raises :class:`DiskFull` (a
:class:`~tl_dashboard.errors.UserError`) with one line naming the folder, the space needed, the
space free and the fix. :func:`check_free_space` raises the same error *before* writing a byte.

Example:
    >>> from pathlib import Path
    >>> atomic_write_json(Path("/tmp/tl-demo/config.json"), {"model": "resnet18"})
    >>> check_free_space("/tmp/tl-demo", 1024, "a tiny file")  # plenty of room: returns the free bytes
    ... # doctest: +SKIP
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import UserError

__all__ = [
    "DiskFull",
    "free_bytes",
    "check_free_space",
    "is_disk_full",
    "disk_full_from",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_open",
    "remove_temp_files",
    "human_bytes",
    "TEMP_SUFFIX",
]

TEMP_SUFFIX = ".tmp"
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# Room left beyond what a write needs: the SQLite journal, small JSON files, the file system's own blocks.
MARGIN_BYTES = 4 * 1024 * 1024


class DiskFull(UserError, OSError):
    """Not enough free space to write something; names the folder, the bytes needed/free and the fix.

    It is also an ``OSError`` with ``errno == ENOSPC``, so code that already handles failed writes
    (``except OSError``) shows its one line.

    Attributes:
        folder: the folder that could not be written.
        need: bytes the write needed (None when unknown).
        free: bytes free there when it failed.
    """

    def __init__(self, folder: str | Path, need: int | None, free: int | None, what: str = "this write", fix: str | None = None) -> None:
        self.folder, self.need, self.free, self.what = Path(folder), need, free, what
        needed = f"needs {human_bytes(need)}" if need else "needs more space"
        free_s = f", {human_bytes(free)} free" if free is not None else ""
        fix = fix or (
            "free space there (delete old runs or data sets) or point TL_RUNS_DIR / TL_DATASETS_DIR at a larger disk, then try again"
        )
        super().__init__(f"Disk full: {what} in {self.folder} {needed}{free_s}. Fix: {fix}.")
        self.errno = errno.ENOSPC


def human_bytes(n: float | None) -> str:
    """``12.3 MB``-style size (decimal units, as `df -H` prints)."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(path: str | Path) -> Path:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Bytes free for an unprivileged user on the file system holding ``path`` (or its nearest parent)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def check_free_space(path: str | Path, need_bytes: int, what: str, fix: str | None = None, margin: int = MARGIN_BYTES) -> int:
    """Raise :class:`DiskFull` unless ``need_bytes`` (+ a small margin) fit under ``path``.

    Args:
        path: the folder that will be written (need not exist yet).
        need_bytes: what the write will take.
        what: what is being written, for the message ("the checkpoints of 5 epochs").
        fix: the fix to suggest; a generic one by default.
        margin: extra bytes kept free (journal, small files).

    Returns:
        The free bytes found.
    """
    free = free_bytes(path)
    if need_bytes + margin > free:
        raise DiskFull(path, need_bytes + margin, free, what, fix)
    return free


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError (ENOSPC/EDQUOT/EFBIG) or a SQLite error that means the disk is full."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        msg = str(exc).lower()
        return "disk is full" in msg or "disk i/o error" in msg
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_disk_full(cause)


def disk_full_from(exc: BaseException, path: str | Path, need: int | None = None, what: str = "this write") -> DiskFull:
    """A :class:`DiskFull` for ``exc`` raised while writing under ``path``."""
    folder = Path(path)
    if folder.suffix or not folder.is_dir():
        folder = folder.parent
    try:
        free = free_bytes(folder)
    except OSError:
        free = None
    return DiskFull(folder, need, free, what)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", need: int | None = None, what: str | None = None, size: int | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync and rename it into place.

    On any failure the temporary file is removed; a full disk raises :class:`DiskFull`.

    Args:
        path: the final file.
        mode: ``"wb"`` or ``"w"``.
        need: if given, check this many bytes are free before opening anything.
        what: what is written, for error messages (default: the file's name).
        size: the expected size, for the message when the disk fills (default: ``need``).
    """
    path = Path(path)
    what = what or path.name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_from(exc, path.parent, size or need, what) from None
        raise
    if need is not None:
        check_free_space(path.parent, need, what)
    tmp = _temp_name(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(exc, DiskFull) and is_disk_full(exc):
            raise disk_full_from(exc, path.parent, size or need, what) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes, what: str | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename (temp removed on failure)."""
    with atomic_open(path, "wb", what=what, size=len(data)) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, what: str | None = None) -> None:
    atomic_write_bytes(path, text.encode(), what)


def atomic_write_json(path: str | Path, obj: Any, what: str | None = None) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode(), what)


def remove_temp_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove temporary files (``.NAME.PID.tmp``) left by writers that no longer run; return them.

    A temporary file whose writer (the pid in its name) is still alive is left alone.
    """
    from .runs import _pid_alive  # the store's one pid check

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    pattern = f".*{TEMP_SUFFIX}"
    for f in folder.rglob(pattern) if recursive else folder.glob(pattern):
        pid = f.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def dir_size(path: str | Path) -> int:
    """Total bytes of the files under ``path`` (0 if missing)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def copy_tree(src: str | Path, dest: str | Path) -> None:
    """Copy a folder (files + modes), making ``dest``; used by backups."""
    shutil.copytree(src, dest, dirs_exist_ok=True)
