"""Cheap data-folder probes (no image checks), for pages that must answer on every rerun, and the
folder rules the full scan (:mod:`.data`) shares with them: which sub-folders count as class folders.

:mod:`.data` re-exports ``class_folder_count``, ``folder_signature`` and ``data_warnings``.
This module never imports streamlit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["class_folder_count", "folder_signature", "data_warnings"]

_SPLIT_DIRS = ("train", "val")
_HIDDEN_DIRS = ("__MACOSX",)  # macOS zip debris; treated like a dot-folder


def _is_plain_dir(e: os.DirEntry) -> bool:
    return e.is_dir(follow_symlinks=False) and not (e.name.startswith(".") or e.name in _HIDDEN_DIRS)


def _class_dirs(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return set()
    return {e.name for e in entries if _is_plain_dir(e)}


def class_folder_count(data_dir: str | Path) -> int:
    """Number of class sub-folders (cheap, no image checks); pre-split folders count train/'s and val/'s."""
    root = Path(data_dir)
    top = _class_dirs(root)
    if set(_SPLIT_DIRS) <= top:
        return len(_class_dirs(root / "train") | _class_dirs(root / "val"))
    return len(top)


def folder_signature(data_dir: str | Path) -> tuple[int, int, int]:
    """(files, total bytes, newest mtime_ns) under a folder: changes when images are added or edited.

    A cache key, so a scan is redone after an upload but not on every rerun.
    """
    n = size = newest = 0
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(dirpath).st_mtime_ns)
        for f in filenames:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


def data_warnings(counts: dict[str, dict[str, int]], *, imbalance: float = 3.0, min_images: int = 5) -> list[str]:
    """Plain-language warnings about class imbalance and classes too small to validate.

    Args:
        counts: ``{class: {"train": n, "val": n}}`` as :meth:`DatasetSplit.counts` returns it.
        imbalance: warn when the largest class has more than this many times the smallest.
        min_images: warn about classes with fewer images in total.
    """
    totals = {c: int(v.get("train", 0)) + int(v.get("val", 0)) for c, v in counts.items()}
    out: list[str] = []
    if len(totals) >= 2:
        big, small = max(totals, key=totals.get), min(totals, key=totals.get)
        if totals[small] > 0 and totals[big] / totals[small] > imbalance:
            out.append(
                f"Class imbalance: '{big}' has {totals[big]} images but '{small}' only {totals[small]} "
                f"({totals[big] / totals[small]:.1f}x). The model may learn to favour '{big}'; "
                f"add images to '{small}' or remove some from '{big}'."
            )
    tiny = [c for c, n in totals.items() if n < min_images]
    if tiny:
        names = ", ".join(f"'{c}' ({totals[c]})" for c in tiny)
        out.append(
            f"Too few images to validate: {names}. With fewer than {min_images} images a class gets "
            "1 validation image, so its accuracy is all-or-nothing; add more images."
        )
    return out
