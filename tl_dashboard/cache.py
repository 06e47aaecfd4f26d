"""The on-disk cache: where it lives, how big it may grow, and how entries are written safely.

Everything that outlives a run (decoded images, frozen-prefix features, the scan's memo of verified
files) lives under one folder:

* ``$TL_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/tl-dashboard``, else ``~/.cache/tl-dashboard``;
  never inside the repository.
* Its entries (``<root>/<kind>/<key>/``) are bounded by ``$TL_CACHE_MAX_GB`` (default 10 GiB):
  after each new entry the least recently used ones are evicted until the total fits.

An entry is built in a temporary folder and published with one ``rename``: a reader sees a whole
entry or none, never half of one. A process killed while building leaves only a ``.tmp-*`` folder,
which is never read and is swept later. Two processes building the same entry take turns on a lock
file; the second finds the first's entry and uses it.

Example:
    >>> with build_entry("images", key, meta={"images": 3}) as tmp:    # doctest: +SKIP
    ...     (tmp / "images.u8").write_bytes(pixels)
    >>> open_entry("images", key)                                      # doctest: +SKIP
    PosixPath('/home/me/.cache/tl-dashboard/images/3f2a...')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError
from .runs import _pid_alive  # the store's one pid check

__all__ = [
    "CacheError",
    "build_entry",
    "cache_root",
    "clear",
    "digest_key",
    "evict",
    "human_bytes",
    "list_entries",
    "max_bytes",
    "open_entry",
    "usage",
]

DEFAULT_MAX_GB = 10.0
KINDS = ("images", "features")
_META = "entry.json"
_TMP_MAX_AGE = 6 * 3600  # a .tmp folder this old whose owner is unknown is debris


class CacheError(UserError, OSError):
    """The cache cannot be written (disk full, no permission); the message names the folder and the fix."""


def cache_root() -> Path:
    """The cache folder (created on demand): ``$TL_CACHE_DIR``, ``$XDG_CACHE_HOME/tl-dashboard`` or
    ``~/.cache/tl-dashboard``."""
    env = os.environ.get("TL_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "tl-dashboard").absolute()


def max_bytes() -> int:
    """The size bound of the cache's entries: ``$TL_CACHE_MAX_GB`` GiB (default 10)."""
    from .data import env_number

    return int(env_number("TL_CACHE_MAX_GB", DEFAULT_MAX_GB) * 2**30)


def digest_key(parts: Any) -> str:
    """A stable sha256 hex key of JSON-able ``parts`` (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def _kind_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(KINDS)}")
    return cache_root() / kind


def open_entry(kind: str, key: str) -> Path | None:
    """The folder of a complete entry (its use time refreshed for LRU), or None when there is none."""
    d = _kind_dir(kind) / key
    meta = d / _META
    if not meta.is_file():
        return None
    with contextlib.suppress(OSError):
        os.utime(meta)  # last use, for least-recently-used eviction
    return d


def entry_meta(path: Path) -> dict[str, Any]:
    """The ``entry.json`` of an entry folder ({} when unreadable)."""
    try:
        return json.loads((path / _META).read_text())
    except (OSError, ValueError):
        return {}


_FIX = "free some space, run `tl-dashboard cache --clear`, or point TL_CACHE_DIR at a larger disk"


def _check_space(folder: Path, need: int) -> None:
    """Raise :class:`~tl_dashboard.storage.DiskFull` unless ``need`` bytes (+256 MiB for others) fit."""
    from .storage import check_free_space

    if need > 0:
        check_free_space(folder, need, "the cache entry", _FIX, margin=256 * 2**20)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (fcntl where available; else no lock, rename still wins)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps entries whole
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def build_entry(kind: str, key: str, *, meta: dict[str, Any], need_bytes: int = 0) -> Iterator[Path | None]:
    """Build one entry atomically.

    Yields a fresh temporary folder to fill, or ``None`` when the entry appeared meanwhile (another
    process built it while this one waited on the lock): then use :func:`open_entry`. On a clean exit
    ``entry.json`` (``meta`` + size + time) is written last and the folder is renamed into place; on
    any exception the temporary folder is removed and the exception propagates (disk full becomes
    :class:`CacheError`). Afterwards the cache is trimmed to :func:`max_bytes`, sparing this entry.

    Raises:
        storage.DiskFull: not enough free space (checked first against ``need_bytes``), or a write hit a full disk.
        CacheError: the cache folder cannot be written.
    """
    parent = _kind_dir(kind)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _check_space(parent, need_bytes)
    except PermissionError as exc:
        raise CacheError(f"Cannot write the cache in {parent}: {exc.strerror}. Set TL_CACHE_DIR to a writable folder.") from None
    with _lock(parent / f".{key}.lock"):
        if open_entry(kind, key) is not None:
            yield None
            return
        tmp = parent / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            size = sum(f.stat().st_size for f in tmp.iterdir())
            info = {**meta, "kind": kind, "key": key, "bytes": size, "created": time.time()}
            with open(tmp / _META, "w") as fh:
                json.dump(info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.rename(tmp, parent / key)
            except OSError:  # someone without the lock published it first: keep theirs
                if open_entry(kind, key) is None:
                    raise
        except OSError as exc:
            from .storage import DiskFull, disk_full_from, is_disk_full

            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                full = disk_full_from(exc, parent, need_bytes or None, "the cache entry")
                raise DiskFull(full.folder, full.need, full.free, full.what, _FIX) from None
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    evict(spare={(kind, key)})


def _sweep_tmp(parent: Path) -> None:
    """Remove ``.tmp-*`` folders left by killed builders (owner pid gone, or very old)."""
    now = time.time()
    for d in parent.glob(".tmp-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            pid = -1
        try:
            old = now - d.stat().st_mtime > _TMP_MAX_AGE
        except OSError:
            continue
        if old or (pid > 0 and not _pid_alive(pid)):
            shutil.rmtree(d, ignore_errors=True)


def list_entries() -> list[dict[str, Any]]:
    """Every complete entry, most recently used first: ``kind, key, bytes, last_used, created, path`` + its meta."""
    out = []
    for kind in KINDS:
        parent = cache_root() / kind
        if not parent.is_dir():
            continue
        _sweep_tmp(parent)
        for d in parent.iterdir():
            if d.name.startswith(".") or not (d / _META).is_file():
                continue
            meta = entry_meta(d)
            try:
                used = (d / _META).stat().st_mtime
                size = sum(f.stat().st_size for f in d.iterdir())
            except OSError:  # evicted meanwhile
                continue
            out.append({**meta, "kind": kind, "key": d.name, "bytes": size, "last_used": used, "path": str(d)})
    out.sort(key=lambda e: -e["last_used"])
    return out


def _remove(path: Path) -> None:
    """Unpublish first (rename to a .tmp name nobody opens), then delete: a reader never sees half."""
    trash = path.parent / f".tmp-trash-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def evict(limit: int | None = None, spare: set[tuple[str, str]] = frozenset()) -> int:
    """Delete least recently used entries until the total is at most ``limit`` (default :func:`max_bytes`).

    Returns:
        Bytes freed.
    """
    limit = max_bytes() if limit is None else limit
    entries = list_entries()
    total, freed = sum(e["bytes"] for e in entries), 0
    for e in reversed(entries):  # oldest use first
        if total <= limit:
            break
        if (e["kind"], e["key"]) in spare:
            continue
        _remove(Path(e["path"]))
        total -= e["bytes"]
        freed += e["bytes"]
    return freed


def usage() -> dict[str, Any]:
    """``{"path", "bytes", "entries", "max_bytes", "by_kind": {kind: bytes}}`` of the cache."""
    entries = list_entries()
    by_kind = {k: sum(e["bytes"] for e in entries if e["kind"] == k) for k in KINDS}
    memo = cache_root() / "files.sqlite"
    memo_bytes = sum(p.stat().st_size for p in memo.parent.glob("files.sqlite*") if p.is_file()) if memo.exists() else 0
    return {
        "path": str(cache_root()),
        "bytes": sum(by_kind.values()) + memo_bytes,
        "entries": len(entries),
        "max_bytes": max_bytes(),
        "by_kind": {**by_kind, "scan_memo": memo_bytes},
    }


def clear(kind: str | None = None) -> int:
    """Delete every entry (of ``kind``, or all kinds and the scan memo). Returns: bytes freed."""
    freed = 0
    for e in list_entries():
        if kind is None or e["kind"] == kind:
            _remove(Path(e["path"]))
            freed += e["bytes"]
    if kind is None:
        for p in cache_root().glob("files.sqlite*"):
            with contextlib.suppress(OSError):
                freed += p.stat().st_size
                p.unlink()
    return freed


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KB'`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cli_cache(show_list: bool, do_clear: bool, as_json: bool) -> int:
    """``tl-dashboard cache [--list] [--clear] [--json]``: prints the cache's size (and entries); clears it."""
    entries = list_entries() if show_list else []
    freed = clear() if do_clear else None
    info = usage()
    if as_json:
        out = {**info, "freed_bytes": freed} if do_clear else info
        if show_list:
            out["entries"] = entries
        print(json.dumps(out))
        return 0
    for e in entries:
        size = (
            f"{e['image_size']} px (decoded at {e.get('load_size', '?')})"
            if e.get("image_size")
            else f"{e.get('load_size', '?')} px (decoded size)"
        )
        what = (
            f"{e.get('images', '?')} images at {size}"
            if e["kind"] == "images"
            else f"{e.get('model', '?')} depth {e.get('depth', '?')}, {e.get('images', '?')} images"
        )
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        print(f"{e['kind']:<9} {e['key'][:12]}  {human_bytes(e['bytes']):>9}  used {used}  {what}")
    if do_clear:
        print(f"cleared {human_bytes(freed or 0)}")
    print(
        f"cache: {info['path']}  {human_bytes(info['bytes'])} in {info['entries']} entries "
        f"(bound {human_bytes(info['max_bytes'])}: TL_CACHE_MAX_GB)"
    )
    return 0
