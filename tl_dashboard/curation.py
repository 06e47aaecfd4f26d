"""Label review kept in the data set itself: an exclusion list and an undoable relabel log.

Nothing here ever deletes an image.

* **Exclude**: the file stays where it is; its path (relative to the data folder) goes into
  ``.tl-exclude.json`` in the data folder, and the scanner (:func:`tl_dashboard.data.scan_images`)
  lists it under ``skipped`` instead of training on it. :func:`include` takes it back.
* **Relabel**: the file is moved into another class folder (in the same split folder when the data
  set is pre-split), and the move is appended to ``.tl-relabel-log.json``. :func:`undo_relabel`
  moves it back. The scanner needs no help here: the file simply is in its new class folder.

Both files are dot-files, so the scanner never mistakes them for images, and they travel with the
data folder (a zip of it, a copy to another machine).

Example:
    >>> exclude("sample_data/emoji3", ["food/12.png"], reason="not food")      # doctest: +SKIP
    >>> move = relabel("sample_data/emoji3", "food/13.png", "animals")          # doctest: +SKIP
    >>> undo_relabel("sample_data/emoji3", move["id"])                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

__all__ = [
    "EXCLUDE_FILE",
    "RELABEL_LOG",
    "CurationError",
    "excluded_paths",
    "exclude",
    "include",
    "relabel",
    "undo_relabel",
    "relabel_log",
    "filter_excluded",
]

EXCLUDE_FILE = ".tl-exclude.json"
RELABEL_LOG = ".tl-relabel-log.json"
_SPLIT_DIRS = ("train", "val")
_LOCK = threading.Lock()  # one writer per process; the files are replaced atomically


class CurationError(UserError, ValueError):
    """A relabel/exclude request that cannot be done; str() names the file and the fix."""


def _read(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise CurationError(f"Cannot read {path}: {exc}. Fix or remove the file.") from None
    rows = data.get(key) if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _write(path: Path, key: str, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps({"version": 1, key: rows}, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _rel(root: Path, path: str | Path) -> str:
    """``path`` (absolute, or relative to ``root``) as a posix path relative to ``root``, checked inside it."""
    p = Path(path)
    p = p if p.is_absolute() else root / p
    real_root, real = os.path.realpath(root), os.path.realpath(p)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise CurationError(f"{path} is not inside the data folder {root}.")
    return Path(os.path.relpath(real, real_root)).as_posix()


def excluded_paths(root: str | Path) -> dict[str, dict[str, Any]]:
    """Returns: ``{relative posix path: {"path", "reason", "time"}}`` of the excluded files."""
    return {r["path"]: r for r in _read(Path(root) / EXCLUDE_FILE, "excluded") if isinstance(r.get("path"), str)}


def exclude(root: str | Path, paths: Iterable[str | Path], reason: str = "") -> list[str]:
    """Add files to the data set's exclusion list (the files stay on disk).

    Returns:
        The relative paths now excluded that were not before.
    """
    root = Path(root)
    rels = [_rel(root, p) for p in paths]
    with _LOCK:
        rows = _read(root / EXCLUDE_FILE, "excluded")
        have = {r.get("path") for r in rows}
        added = [r for r in dict.fromkeys(rels) if r not in have]
        rows += [{"path": r, "reason": reason, "time": time.time()} for r in added]
        _write(root / EXCLUDE_FILE, "excluded", rows)
    return added


def include(root: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """Take files off the exclusion list. Returns: the relative paths removed from it."""
    root = Path(root)
    rels = {_rel(root, p) for p in paths}
    with _LOCK:
        rows = _read(root / EXCLUDE_FILE, "excluded")
        kept = [r for r in rows if r.get("path") not in rels]
        _write(root / EXCLUDE_FILE, "excluded", kept)
    return sorted(rels & {r.get("path") for r in rows})


def _class_dir(root: Path, rel: str, new_class: str) -> Path:
    parts = Path(rel).parts
    presplit = parts[0] in _SPLIT_DIRS and all((root / d).is_dir() for d in _SPLIT_DIRS) and len(parts) > 2
    base = root / parts[0] if presplit else root
    if not new_class or new_class.startswith(".") or Path(new_class).name != new_class:
        raise CurationError(f"Class {new_class!r} is not a class folder name; pick one of the data set's classes.")
    target = base / new_class
    if not target.is_dir():
        raise CurationError(f"No class folder {target}; pick one of the data set's classes.")
    return target


def _free_name(folder: Path, name: str) -> Path:
    dest, stem, suffix, i = folder / name, Path(name).stem, Path(name).suffix, 1
    while dest.exists():
        dest, i = folder / f"{stem}-{i}{suffix}", i + 1
    return dest


def relabel(root: str | Path, path: str | Path, new_class: str) -> dict[str, Any]:
    """Move one image into another class folder and log the move.

    Args:
        root: the data folder.
        path: the image (absolute, or relative to ``root``).
        new_class: the class folder to move it to (an existing one; in the same ``train/`` or
            ``val/`` folder when the data set is pre-split).

    Returns:
        The log entry ``{"id", "from", "to", "time", "undone"}`` (paths relative to ``root``).

    Raises:
        CurationError: the file is missing or outside ``root``, or ``new_class`` is not a class folder.
    """
    root = Path(root)
    rel = _rel(root, path)
    src = root / rel
    if not src.is_file():
        raise CurationError(f"Image not found: {src}. Rescan the data set; it may have moved already.")
    folder = _class_dir(root, rel, new_class)
    if src.parent == folder:
        raise CurationError(f"{rel} is already in class {new_class!r}.")
    with _LOCK:
        dest = _free_name(folder, src.name)
        shutil.move(str(src), str(dest))
        entry = {"id": secrets.token_hex(4), "from": rel, "to": _rel(root, dest), "time": time.time(), "undone": False}
        rows = _read(root / RELABEL_LOG, "moves")
        _write(root / RELABEL_LOG, "moves", rows + [entry])
        _move_exclusion(root, rel, entry["to"])
    return entry


def _move_exclusion(root: Path, old: str, new: str) -> None:
    rows = _read(root / EXCLUDE_FILE, "excluded")
    if any(r.get("path") == old for r in rows):
        _write(root / EXCLUDE_FILE, "excluded", [dict(r, path=new) if r.get("path") == old else r for r in rows])


def relabel_log(root: str | Path) -> list[dict[str, Any]]:
    """Every logged move, oldest first (undone ones have ``"undone": True``)."""
    return _read(Path(root) / RELABEL_LOG, "moves")


def undo_relabel(root: str | Path, move_id: str) -> dict[str, Any]:
    """Move a relabelled image back where it was and mark the log entry undone.

    Raises:
        CurationError: unknown id, already undone, the moved file is gone, or its old place is taken.
    """
    root = Path(root)
    with _LOCK:
        rows = _read(root / RELABEL_LOG, "moves")
        entry = next((r for r in rows if r.get("id") == move_id), None)
        if entry is None or entry.get("undone"):
            raise CurationError(f"No relabel {move_id!r} to undo in {root / RELABEL_LOG}.")
        src, dest = root / entry["to"], root / entry["from"]
        if not src.is_file():
            raise CurationError(f"{src} is gone, so relabel {move_id} cannot be undone.")
        if dest.exists():
            raise CurationError(f"{dest} exists again; move or rename it, then undo.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dest))
        entry.update(undone=True, undone_time=time.time())
        _write(root / RELABEL_LOG, "moves", rows)
        _move_exclusion(root, entry["to"], entry["from"])
    return entry


def filter_excluded(root: str | Path, files: list[Path]) -> tuple[list[Path], list[Path]]:
    """The scanner's hook: split ``files`` into (kept, excluded); this module's own files are dropped.

    Args:
        root: the data folder (``files`` are under it).
        files: every file the scanner found.
    """
    root = Path(root)
    ours = {root / EXCLUDE_FILE, root / RELABEL_LOG}
    files = [f for f in files if f not in ours]
    excluded = excluded_paths(root) if (root / EXCLUDE_FILE).is_file() else {}
    if not excluded:
        return files, []
    kept, out = [], []
    for f in files:
        (out if f.relative_to(root).as_posix() in excluded else kept).append(f)
    return kept, out
