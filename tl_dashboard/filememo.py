"""What the scan remembers about files between runs, in the cache folder (``files.sqlite``).

* ``stat``: a file's ``(path, size, mtime_ns, inode)`` -> the sha256 of its content. A file whose
  stat is unchanged is not read again; an edited, replaced or touched file is read and hashed anew.
* ``verdict``: a content digest (and the pixel limit) -> the reason the image cannot be used, or
  none. An image is fully decoded once per content, whatever its name or folder.

The memo only ever saves work: if the database cannot be opened or written (read-only disk,
corruption), every lookup misses and the scan simply does the work again.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .cache import cache_root

__all__ = ["FileMemo"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ino INTEGER, digest TEXT);
CREATE TABLE IF NOT EXISTS verdict (digest TEXT, lim INTEGER, reason TEXT, PRIMARY KEY (digest, lim));
"""
StatKey = tuple[int, int, int]  # size, mtime_ns, inode


class FileMemo:
    """The scan's memo (see the module docstring); every method is safe to call when it is unusable."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_root() / "files.sqlite"
        self.db: sqlite3.Connection | None = None
        with contextlib.suppress(sqlite3.Error, OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self.db = db

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def digests(self, stats: dict[str, StatKey]) -> dict[str, str]:
        """``{path: digest}`` for the paths whose remembered stat equals the given one."""
        if self.db is None or not stats:
            return {}
        out: dict[str, str] = {}
        try:
            cur = self.db.execute("SELECT path, size, mtime_ns, ino, digest FROM stat")
            for path, size, mtime, ino, digest in cur:
                if stats.get(path) == (size, mtime, ino):
                    out[path] = digest
        except sqlite3.Error:
            return {}
        return out

    def verdicts(self, digests: Iterable[str], limit: int) -> dict[str, str | None]:
        """``{digest: reason or None}`` for the digests checked before under the same pixel limit."""
        if self.db is None:
            return {}
        want = set(digests)
        try:
            cur = self.db.execute("SELECT digest, reason FROM verdict WHERE lim = ?", (int(limit),))
            return {d: (r or None) for d, r in cur if d in want}
        except sqlite3.Error:
            return {}

    def remember(self, stats: dict[str, StatKey], digests: dict[str, str], verdicts: dict[str, str | None], limit: int) -> None:
        """Store new ``path -> digest`` rows and ``digest -> verdict`` rows (one transaction)."""
        if self.db is None or not (digests or verdicts):
            return
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO stat VALUES (?, ?, ?, ?, ?)", [(p, *stats[p], d) for p, d in digests.items()])
                self.db.executemany(
                    "INSERT OR REPLACE INTO verdict VALUES (?, ?, ?)", [(d, int(limit), r or "") for d, r in verdicts.items()]
                )
        except sqlite3.Error:
            pass
