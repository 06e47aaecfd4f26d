"""Data sets people upload: owned by a workspace, offered again only when usable, recorded per run.

An upload (a zip, a folder picked in the browser, or a set built class by class) lands in a
fresh folder under ``datasets_dir()`` and is scanned with :func:`~tl_dashboard.data.scan_images`
*before* anyone may use it. Only a scan that passes (two or more classes, enough images)
registers it in the run store's ``datasets`` table under the uploading workspace, with its class
and image counts and content fingerprint; a failed, empty or one-class upload is removed again
and raises, so the data in use is never replaced by it and it is never offered for reuse.
The registered path is the data root (``pets.zip`` holding ``pets/cats``, ``pets/dogs``
registers ``.../pets``), so reusing it trains on the class folders, not on their wrapper.

:func:`dataset_record` is what a run stores about its data (name, path, image count and
fingerprint), shown by Runs, the run pickers and Compare.

This module never imports streamlit.

Example:
    >>> info = import_zip_upload(store, ws_id, open("pets.zip", "rb").read(), "pets.zip")   # doctest: +SKIP
    >>> [d["name"] for d in list_datasets(store, ws_id)]                                     # doctest: +SKIP
    ['pets']
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DataError, scan_images

if TYPE_CHECKING:
    from .runs import RunStore

__all__ = ["dataset_label", "dataset_record", "import_folder_upload", "import_zip_upload", "list_datasets", "register_dataset"]


def _key(path: str | Path) -> str:
    return os.path.realpath(Path(path).expanduser())


def _row(store: RunStore, path: str | Path) -> dict[str, Any] | None:
    rows = store._query("SELECT * FROM datasets WHERE path=?", (_key(path),))
    return dict(rows[0]) if rows else None


def dataset_record(store: RunStore, data_dir: str | Path) -> dict[str, Any]:
    """What a run records about its data at queue time: ``{"name", "path"}`` plus, for a
    registered upload, ``images``, ``classes`` and ``fingerprint`` as scanned at upload.

    The worker adds the counts and fingerprint of what it really trained on when the run starts.
    """
    path = _key(data_dir)
    row = _row(store, path)
    if row:
        return {"name": row["name"], "path": path, "images": row["images"], "classes": row["classes"], "fingerprint": row["fingerprint"]}
    return {"name": Path(path).name, "path": path}


def dataset_label(run: dict[str, Any]) -> str:
    """Short text for a run's data set: ``"emoji3 · 180 images"`` (``""`` when unknown)."""
    d = run.get("dataset") or {}
    name = d.get("name") or (Path(str((run.get("config") or {}).get("data_dir", ""))).name or "")
    if not name:
        return ""
    return f"{name} · {d['images']} images" if d.get("images") else name


def register_dataset(store: RunStore, root: str | Path, ws_id: str | None, name: str, *, val_fraction: float = 0.2) -> dict[str, Any]:
    """Scan ``root`` and, when it is usable, record it as ``ws_id``'s data set ``name``.

    Returns:
        ``{"path", "name", "classes", "images", "fingerprint", "workspace"}``.

    Raises:
        DataError: not usable (no or one class, too few images): nothing is recorded.
    """
    split = scan_images(root, val_fraction=val_fraction)
    info = {
        "path": _key(split.root),
        "name": str(name)[:80] or Path(root).name,
        "classes": len(split.classes),
        "images": len(split.train) + len(split.val),
        "fingerprint": split.fingerprint(),
        "workspace": ws_id,
    }
    with store._tx() as con:
        con.execute(
            "INSERT OR REPLACE INTO datasets (path, workspace, name, classes, images, fingerprint, created) VALUES (?,?,?,?,?,?,?)",
            (info["path"], ws_id, info["name"], info["classes"], info["images"], info["fingerprint"], time.time()),
        )
    return info


def _register_or_remove(store: RunStore, folder: Path, root: Path, ws_id: str | None, name: str, what: str) -> dict[str, Any]:
    try:
        return register_dataset(store, root, ws_id, name)
    except DataError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # a failed upload is never offered again
        raise DataError(f"{what} is not usable: {exc} Nothing was replaced: the data in use is unchanged.") from None


def import_zip_upload(store: RunStore, ws_id: str | None, data: bytes, filename: str) -> dict[str, Any]:
    """Import an uploaded zip into a fresh folder, scan it and register it for ``ws_id``.

    Returns:
        :func:`register_dataset`'s dict plus ``written`` and ``skipped`` (file counts).

    Raises:
        ArchiveError: the zip is refused (nothing is left on disk).
        DataError: the images do not make a usable data set (the folder is removed again).
    """
    from .importer import import_zip, new_upload_dir, safe_name

    name = safe_name(Path(filename).stem, "upload")
    folder = new_upload_dir(name)
    try:
        report = import_zip(data, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    info = _register_or_remove(
        store, folder, report.root, ws_id, report.root.name if report.root != folder else name, f"The zip {filename!r}"
    )
    return {**info, "written": len(report.written), "skipped": len(report.skipped)}


def import_folder_upload(store: RunStore, ws_id: str | None, by_class: dict[str, Sequence[tuple[str, bytes]]], name: str) -> dict[str, Any]:
    """Save images uploaded as ``{class: [(file name, bytes), ...]}``, scan and register them.

    Raises:
        DataError: fewer than two classes with usable images (the folder is removed again).
    """
    from .importer import new_upload_dir, safe_name, save_images

    folder = new_upload_dir(safe_name(name, "upload"))
    written = skipped = 0
    try:
        for cls, items in by_class.items():
            report = save_images(list(items), folder / safe_name(cls, "class"))
            written, skipped = written + len(report.written), skipped + len(report.skipped)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    info = _register_or_remove(store, folder, folder, ws_id, safe_name(name, "upload"), "The uploaded folder")
    return {**info, "written": written, "skipped": skipped}


def list_datasets(store: RunStore, ws_id: str | None, *, everyone: bool = False) -> list[dict[str, Any]]:
    """The usable data sets of a workspace (``everyone``: of all), newest first, whose folder is still there."""
    sql, args = "SELECT * FROM datasets", ()
    if not everyone:
        sql, args = sql + " WHERE workspace=?", (ws_id,)
    rows = [dict(r) for r in store._query(sql + " ORDER BY created DESC", args)]
    return [r for r in rows if Path(r["path"]).is_dir()]
