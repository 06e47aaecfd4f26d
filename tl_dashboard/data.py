"""Image-folder scanning, validation and splitting; loading one image.

A data folder holds one sub-folder per class (``root/cats/1.jpg``), or ``train/`` and
``val/`` folders that each hold class sub-folders. :func:`scan_images` accounts for every
file under the root: each is either used (in ``train`` or ``val``) or listed in
``skipped`` with a one-line reason, so a bad file never surfaces mid-epoch.

This module never imports streamlit.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import random
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from PIL import Image, ImageFile, ImageOps

from .curation import filter_excluded
from .dataprobe import _SPLIT_DIRS, _is_plain_dir, class_folder_count, data_warnings, folder_signature  # probes re-exported
from .errors import UserError
from .imageops import _RESAMPLE, resize_center_square, resized_size, to_rgb  # noqa: F401  (re-exported)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DataError",
    "Sample",
    "Skipped",
    "DatasetSplit",
    "scan_images",
    "check_image",
    "load_rgb",
    "to_rgb",
    "resized_size",
    "resize_center_square",
    "env_number",
    "class_folder_count",
    "folder_signature",
    "data_warnings",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MIN_IMAGE_SIDE = 16
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
_DEFAULT_CACHE_GB = 4.0
_VALIDATE_DRAFT = 256

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class DataError(UserError, ValueError):
    """Bad data folder; str() is one clear line naming the folder/class and the fix."""


@dataclass(frozen=True)
class Sample:
    """One usable image and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    """One file (or folder) under the data root that is not used, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict:
        """Returns: ``{"path": str, "reason": str}`` (JSON-ready)."""
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class DatasetSplit:
    """Result of :func:`scan_images`: classes, the train/val split and skipped files."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[Skipped]
    presplit: bool
    digests: dict[Path, str] = field(default_factory=dict, compare=False, repr=False)  # sha256 of each used file

    def counts(self) -> dict[str, dict[str, int]]:
        """Returns: ``{class_name: {"train": n, "val": n}}`` for every class, in label order."""
        out = {name: {"train": 0, "val": 0} for name in self.classes}
        for split, samples in (("train", self.train), ("val", self.val)):
            for s in samples:
                out[self.classes[s.label]][split] += 1
        return out

    def fingerprint(self) -> str:
        """Hash of the classes and every used sample's (relative path, size, mtime_ns, split, label).

        Returns:
            A sha256 hex digest that changes when an image is added, removed, edited or
            moved between splits, or when the class list changes.
        """
        rows = []
        for split, samples in (("train", self.train), ("val", self.val)):
            for s in samples:
                try:
                    st = os.stat(s.path)
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:  # deleted since the scan: still changes the hash
                    size, mtime = -1, -1
                rows.append([s.path.relative_to(self.root).as_posix(), size, mtime, split, s.label])
        rows.sort()
        blob = json.dumps({"classes": self.classes, "samples": rows}, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _Rejected(Exception):
    """Internal: an image that cannot be used; ``args[0]`` is the skip reason."""


def env_number(name: str, default: float) -> float:
    """A positive number from environment variable ``name``, or ``default`` when it is unset or blank.

    Raises:
        ValueError: The variable is set but is not a positive finite number (the message names it).

    Example:
        >>> env_number("TL_MAX_CACHE_GB", 4.0)  # unset
        4.0
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{name}={raw!r} is not a number; set it to a positive number or unset it.") from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{name}={raw!r} must be a positive number; set it to e.g. {default:g} or unset it.")
    return value


def _resolve_max_pixels(max_pixels: int | None) -> int:
    if max_pixels is None:
        return int(env_number("TL_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS))
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels={max_pixels!r} must be a positive int (or None for the default).")
    return max_pixels


def _short(exc: BaseException, path: Path | None) -> str:
    msg = (str(exc) or type(exc).__name__).splitlines()[0]
    if path is not None:
        msg = msg.replace(str(path), path.name)
    return msg if len(msg) <= 160 else msg[:157] + "..."


def _decode(source: Path | BinaryIO, limit: int, draft_size: int | None, min_side: int = 0) -> Image.Image:
    """Open, guard, decode, EXIF-rotate and convert one image. Raises _Rejected(reason)."""
    path = source if isinstance(source, Path) else None
    try:
        with Image.open(source) as img:
            w, h = img.size
            if w * h > limit:
                raise _Rejected(
                    f"too large: {w}x{h} pixels exceeds the limit of {limit} (decompression-bomb guard); "
                    "raise TL_MAX_IMAGE_PIXELS to allow it"
                )
            if min(w, h) < min_side:
                raise _Rejected(f"too small ({w}x{h}; need at least {min_side} px a side)")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # full decode: raises on truncated data
            try:
                img = ImageOps.exif_transpose(img)  # a loaded copy, detached from the file
            except Exception:  # malformed EXIF: keep the pixels, ignore the orientation
                img = img.copy()
            return to_rgb(img)
    except _Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Rejected(f"too large: {_short(exc, path)} (Pillow's decompression-bomb guard)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _Rejected(f"unreadable or truncated image: {_short(exc, path)}") from None


def load_rgb(source: ImageSource, *, max_pixels: int | None = None, draft_size: int | None = None) -> Image.Image:
    """Load any supported image as an EXIF-upright RGB :class:`PIL.Image.Image`.

    Args:
        source: Image file path, the encoded bytes (e.g. a browser upload's ``getvalue()``),
            or a binary file object (read from where it stands).
        max_pixels: Refuse images with more pixels than this (checked from the header,
            before decoding). ``None``: env ``TL_MAX_IMAGE_PIXELS`` or 64 M.
        draft_size: For JPEGs, let libjpeg decode at a reduced scale whose sides stay
            >= this size (much faster for big photos).

    Returns:
        A fully loaded RGB image detached from the file. 16-bit and float images are
        scaled to 8 bits by their value range; transparency is composited on white;
        multi-frame files give their first frame.

    Raises:
        DataError: The file is missing, unreadable, truncated or too large.

    Example:
        >>> load_rgb(Path("cat.jpg").read_bytes(), draft_size=256).mode
        'RGB'
    """
    limit = _resolve_max_pixels(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            return _decode(p, limit, draft_size)
        except _Rejected as exc:
            raise DataError(f"Cannot use image {p}: {exc.args[0]}. Re-scan the data folder or remove the file.") from None
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    label = str(getattr(source, "name", "") or "given in memory")
    try:
        return _decode(fp, limit, draft_size)
    except _Rejected as exc:
        raise DataError(
            f"Cannot use the image {label}: {exc.args[0]}. Give a JPEG, PNG or another supported image ({', '.join(IMAGE_EXTENSIONS)})."
        ) from None


_checks_lock = threading.Lock()
_checks_running = 0  # checks in progress, over all threads
_truncated_flag = False  # LOAD_TRUNCATED_IMAGES as it was before the first of them


@contextlib.contextmanager
def _truncation_detected() -> Iterator[None]:
    """Keep Pillow's global ``LOAD_TRUNCATED_IMAGES`` off while any check runs; restore it after the last."""
    global _checks_running, _truncated_flag
    with _checks_lock:
        if _checks_running == 0:
            _truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False  # only matters if someone set it
        _checks_running += 1
    try:
        yield
    finally:
        with _checks_lock:
            _checks_running -= 1
            if _checks_running == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncated_flag


def check_image(path: str | Path, *, max_pixels: int | None = None) -> str | None:
    """Check that a file is a usable image: a non-empty regular file that fully decodes.

    The checks :func:`scan_images` runs on every file (after its folder and extension checks):
    the header size against the decompression-bomb limit, at least ``MIN_IMAGE_SIDE`` pixels a
    side, then a full decode (JPEGs at reduced scale) that catches truncated and fake images
    even when Pillow's ``LOAD_TRUNCATED_IMAGES`` is set.

    Args:
        path: The file.
        max_pixels: Refuse images with more pixels than this. ``None``: env
            ``TL_MAX_IMAGE_PIXELS`` or 64 M.

    Returns:
        The one-line reason to skip the file (it names the file by its base name only), or
        None when it is usable.

    Example:
        >>> check_image("photos/cats/empty.jpg")
        'empty file (0 bytes)'
    """
    path, limit = Path(path), _resolve_max_pixels(max_pixels)
    st = _stat_or_reason(path)
    if isinstance(st, str):
        return st
    try:
        with _truncation_detected():
            _decode(path, limit, _VALIDATE_DRAFT, MIN_IMAGE_SIDE)
    except _Rejected as exc:
        return exc.args[0]
    return None


def _check_file(path: Path, root_real: str) -> str | tuple[int, int, int]:
    """A scanned file's folder, extension and stat checks (no reading). Returns: the skip reason,
    or the ``(size, mtime_ns, inode)`` the scan memo is keyed by."""
    try:
        if os.path.islink(path) and not _inside(path, root_real):
            return "symlink leaves the data folder"
    except OSError as exc:
        return f"unreadable file: {_short(exc, path)}"
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image (extension {suffix})" if suffix else "not an image (no extension)"
    st = _stat_or_reason(path)
    return st if isinstance(st, str) else (st.st_size, st.st_mtime_ns, st.st_ino)


def _stat_or_reason(path: Path) -> os.stat_result | str:
    """The file's stat, or the reason it is no image file at all (gone, unreadable, not regular, empty)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "file not found"
    except OSError as exc:
        return f"unreadable file: {_short(exc, path)}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return st


def _inside(path: str | Path, root_real: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), root_real]) == root_real


def _entries(folder: Path, skipped: list[Skipped]) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skipped(folder, f"unreadable folder: {_short(exc, folder)}"))
        return []


def _walk(folder: Path, root_real: str, files: list[Path], skipped: list[Skipped]) -> None:
    """Append every file under ``folder`` to ``files``; hidden/symlinked folders go to ``skipped`` whole."""
    for e in _entries(folder, skipped):
        if _is_plain_dir(e):
            _walk(Path(e.path), root_real, files, skipped)
        elif e.is_dir():  # hidden folder, or a symlink to a folder: listed once, not followed
            reason = (
                "hidden folder (not scanned)"
                if not e.is_symlink()
                else "symlinked folder (not followed)"
                if _inside(e.path, root_real)
                else "symlink leaves the data folder"
            )
            skipped.append(Skipped(Path(e.path), reason))
        else:
            files.append(Path(e.path))


def _place(parts: tuple[str, ...], presplit: bool) -> tuple[str, str] | str:
    """Returns: ``(split, class)`` for a file at relative ``parts``, or the reason it has no class."""
    if parts[-1].startswith("."):
        return "hidden file"
    if not presplit:
        return ("all", parts[0]) if len(parts) > 1 else "not inside a class folder"
    if len(parts) == 1 or (parts[0] in _SPLIT_DIRS and len(parts) == 2):
        return "not inside a class folder"
    return (parts[0], parts[1]) if parts[0] in _SPLIT_DIRS else "outside train/ and val/ (the folder is pre-split)"


def _split_class(paths: list[Path], val_fraction: float, seed: int, name: str) -> tuple[list[Path], list[Path]]:
    """Seeded split of one class, independent of listing order and of the other classes."""
    ordered = sorted(paths, key=lambda p: p.as_posix())
    random.Random(f"{seed}/{name}").shuffle(ordered)
    n_val = min(max(round(len(ordered) * val_fraction), 1), len(ordered) - 1)
    return ordered[n_val:], ordered[:n_val]


def _skip_hint(skipped: list[Skipped], folder: Path) -> str:
    inside = [s for s in skipped if folder == s.path or folder in s.path.parents]
    if not inside:
        return ""
    return f" ({len(inside)} file(s) skipped there, e.g. '{inside[0].path.name}': {inside[0].reason})"


def _validate(
    files: list[Path], root_real: str, limit: int, progress: Callable[[int, int], None] | None
) -> tuple[list[str | None], dict[Path, str]]:
    """Check ``files``: cheap checks here, then a full decode on every core of each file content not
    verified before (remembered in the cache folder, :mod:`.filememo`).

    Returns:
        The skip reason or None per file, and the sha256 digest of every usable file.
    """
    from .filememo import FileMemo
    from .parallel import verify_files

    reasons: list[str | None] = [None] * len(files)
    stats: dict[str, tuple[int, int, int]] = {}
    for i, f in enumerate(files):
        r = _check_file(f, root_real)
        if isinstance(r, str):
            reasons[i] = r
        else:
            stats[str(f)] = r
    memo = FileMemo()
    try:
        digests = memo.digests(stats)
        verdicts = memo.verdicts(digests.values(), limit)
        todo = [p for p in stats if digests.get(p) not in verdicts]
        new_digests, new_verdicts = {}, {}
        for p, (digest, reason) in zip(todo, verify_files(todo, limit, progress) if todo else []):
            if digest:
                new_digests[p] = digests[p] = digest
                new_verdicts[digest] = verdicts[digest] = reason
            else:
                reasons[files.index(Path(p))] = reason
        memo.remember(stats, new_digests, new_verdicts, limit)
    finally:
        memo.close()
    used: dict[Path, str] = {}
    for i, f in enumerate(files):
        d = digests.get(str(f))
        if reasons[i] is None and d is not None:
            reasons[i] = verdicts[d]
            if reasons[i] is None:
                used[f] = d
    return reasons, used


def _top_folders(root: Path) -> list[os.DirEntry]:
    """The plain sub-folders of ``root``; raises DataError when ``root`` is missing, a file or unreadable."""
    if not root.exists():
        raise DataError(f"Data folder not found: {root}. Pick an existing folder with one sub-folder per class.")
    if not root.is_dir():
        raise DataError(f"Data folder {root} is a file, not a folder. Pick the folder that holds one sub-folder per class.")
    try:
        with os.scandir(root) as it:
            return [e for e in it if _is_plain_dir(e)]
    except OSError as exc:
        raise DataError(f"Cannot read data folder {root}: {_short(exc, root)}. Check its permissions.") from None


def _usable(
    root: Path,
    files: list[Path],
    presplit: bool,
    skipped: list[Skipped],
    root_real: str,
    limit: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[tuple[str, str], list[Path]], dict[Path, str]]:
    """Place each file in its (split, class) and validate it; the rest go to ``skipped`` with a reason.

    Returns:
        The usable files per ``(split, class)`` (split ``"all"`` when not pre-split), and their digests.
    """
    jobs: list[tuple[str, str, Path]] = []
    for f in files:
        where = _place(f.relative_to(root).parts, presplit)
        if isinstance(where, str):
            skipped.append(Skipped(f, where))
        else:
            jobs.append((*where, f))
    usable: dict[tuple[str, str], list[Path]] = collections.defaultdict(list)
    reasons, digests = _validate([j[2] for j in jobs], root_real, limit, progress)
    for (split, c, f), reason in zip(jobs, reasons):
        if reason is None:
            usable[split, c].append(f)
        else:
            skipped.append(Skipped(f, reason))
    return usable, digests


def scan_images(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetSplit:
    """Find, validate and split the images of a class-per-folder data set.

    Every image is fully decoded once (JPEGs at reduced scale) so truncated or fake
    images are caught here, not mid-epoch. Hidden folders, ``__MACOSX`` and symlinked
    folders are listed once in ``skipped`` and not descended into.

    Args:
        root: Folder with one sub-folder per class (files nested deeper belong to that class),
            or with ``train/`` and ``val/`` folders that each hold class sub-folders.
        val_fraction: Share of each class held out for validation, in (0, 0.9]; per class
            ``n_val = round(n * val_fraction)`` clamped to [1, n - 1]. Ignored when pre-split.
        seed: Split seed; the split is stratified and deterministic for a given seed.
        max_pixels: Images with more pixels are skipped (header check, no decode).
            ``None``: env ``TL_MAX_IMAGE_PIXELS`` or 64 M.
        progress: called with ``(checked, to check)`` while new files are decoded (on every core;
            a file content verified before is remembered in the cache folder and not decoded again).

    Returns:
        A :class:`DatasetSplit`; every file under ``root`` is in ``train``, ``val`` or ``skipped``.

    Raises:
        DataError: ``root`` is missing or not a folder; it has no class folders, no usable
            images or one class; a class has too few usable images; or ``val_fraction`` is
            out of range. A pre-split folder needs >= 1 usable image per class in each split.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction <= 0.9:
        raise DataError(f"val_fraction={val_fraction!r} is out of range; pick a value in (0, 0.9], e.g. 0.2.")
    limit = _resolve_max_pixels(max_pixels)
    root = Path(root).expanduser().absolute()
    top = _top_folders(root)
    root_real = os.path.realpath(root)
    skipped: list[Skipped] = []
    presplit = set(_SPLIT_DIRS) <= {e.name for e in top}
    bases = [root / d for d in _SPLIT_DIRS] if presplit else [root]
    classes = sorted({e.name for b in bases for e in _entries(b, []) if _is_plain_dir(e)})
    if not classes:
        raise DataError(
            f"No class sub-folders in {root}. Put the images in one sub-folder per class, "
            f"e.g. {root / 'cats'}/1.jpg and {root / 'dogs'}/1.jpg."
        )

    files: list[Path] = []
    _walk(root, root_real, files, skipped)
    files, excluded = filter_excluded(root, files)  # label review: .tl-exclude.json in the data folder
    skipped.extend(Skipped(f, "excluded in label review (.tl-exclude.json)") for f in excluded)
    usable, digests = _usable(root, files, presplit, skipped, root_real, limit, progress)
    skipped.sort(key=lambda s: s.path.as_posix())
    train, val = _assign(root, classes, usable, skipped, presplit, float(val_fraction), seed)
    key = lambda s: (s.label, s.path.as_posix())  # noqa: E731
    return DatasetSplit(
        root=root,
        classes=classes,
        train=sorted(train, key=key),
        val=sorted(val, key=key),
        skipped=skipped,
        presplit=presplit,
        digests=digests,
    )


def _assign(
    root: Path,
    classes: list[str],
    usable: dict[tuple[str, str], list[Path]],
    skipped: list[Skipped],
    presplit: bool,
    val_fraction: float,
    seed: int,
) -> tuple[list[Sample], list[Sample]]:
    """The train and val samples of the usable files; raises DataError on too few images or classes."""
    if not usable:
        raise DataError(
            f"Found 0 images in subfolders of {root}. Supported extensions are {', '.join(IMAGE_EXTENSIONS)}{_skip_hint(skipped, root)}."
        )
    if len(classes) == 1:
        raise DataError(f"Found only one class ({classes[0]!r}) in {root}: a classifier needs at least two class sub-folders.")
    train: list[Sample] = []
    val: list[Sample] = []
    for label, c in enumerate(classes):
        if presplit:
            for split, out in (("train", train), ("val", val)):
                if not usable[split, c]:
                    folder = root / split / c
                    raise DataError(
                        f"Class {c!r} has 0 usable images in {root / split}; a pre-split folder needs at least 1 "
                        f"per class in both train/ and val/{_skip_hint(skipped, folder)}. Add images to {folder} "
                        f"or remove the class from both splits."
                    )
                out.extend(Sample(f, label) for f in usable[split, c])
            continue
        n = len(usable["all", c])
        if n < 2:
            raise DataError(
                f"Class {c!r} has {n} usable image{'' if n == 1 else 's'} in {root}; each class needs at least 2 "
                f"(one to train, one to validate){_skip_hint(skipped, root / c)}. Add images to {root / c} "
                "or remove the folder."
            )
        tr, va = _split_class(usable["all", c], val_fraction, seed, c)
        train.extend(Sample(f, label) for f in tr)
        val.extend(Sample(f, label) for f in va)
    return train, val


def __getattr__(name: str) -> Any:
    if name == "DecodedImageCache":  # moved to imagestore (it needs torch); kept importable from here
        from .imagestore import DecodedImageCache

        return DecodedImageCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
