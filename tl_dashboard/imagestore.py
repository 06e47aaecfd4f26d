"""Decoded images on disk: decode each image once, on every core, and reuse it across runs.

:func:`open_images` returns an :class:`ImageStore`: one raw file of uint8 ``(N, 3, L, L)`` rows
(each image's shorter side resized to the load size ``L``, centre square crop, exactly as
:func:`~tl_dashboard.data.resize_center_square` prepares it) plus the content digest of each row.
It is a cache entry (:mod:`.cache`) keyed by the files' content digests, the load size and the
interpolation: any later run, sweep, probe or evaluation on the same images at the same
preprocessing opens it instantly; an edited image or another size is another entry. Building a
new entry copies the rows it shares with entries already on disk (one added image does not
decode the other 100,000 again).

Batches are read with ``pread`` into a fresh buffer, so memory stays at a few batches however many
images there are; the operating system's page cache keeps hot rows in RAM it can take back.

:class:`DecodedImageCache` is the older in-memory cache for a few images (evaluation's helpers).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import cache, data
from .data import DataError, DatasetSplit, Sample, env_number

__all__ = ["DecodedImageCache", "ImageStore", "RowView", "open_images", "split_digests"]

_FILE, _INDEX = "images.u8", "digests.txt"
Progress = Callable[[int, int], None]


class ImageStore:
    """One complete images entry, opened for reading (see the module docstring)."""

    def __init__(self, path: Path, load_size: int) -> None:
        self.path, self.load_size = Path(path), int(load_size)
        self.digests = (self.path / _INDEX).read_text().split()
        self.row_of = {d: i for i, d in enumerate(self.digests)}
        self.item_bytes = 3 * self.load_size**2
        self._fd = os.open(self.path / _FILE, os.O_RDONLY)
        self.hit = False  # True when the entry was on disk before this run asked for it

    def __len__(self) -> int:
        return len(self.digests)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    @property
    def nbytes(self) -> int:
        return len(self) * self.item_bytes

    def rows(self, samples: Sequence[Sample], digests: dict[Path, str]) -> torch.Tensor:
        """Row index (int64) of each sample, from the scan's ``{path: digest}``."""
        return torch.tensor([self.row_of[digests[Path(s.path)]] for s in samples], dtype=torch.int64)

    def read(self, rows: Sequence[int] | torch.Tensor, *, pin: bool = False) -> torch.Tensor:
        """uint8 images ``(len(rows), 3, L, L)`` for the given rows (pinned memory when ``pin``)."""
        L = self.load_size
        out = torch.empty((len(rows), 3, L, L), dtype=torch.uint8, pin_memory=pin)
        buf = out.numpy().reshape(len(rows), -1)
        for j, r in enumerate(rows.tolist() if isinstance(rows, torch.Tensor) else rows):
            if os.preadv(self._fd, [buf[j]], int(r) * self.item_bytes) != self.item_bytes:
                raise DataError(f"The decoded-image cache {self.path} is damaged; run `tl-dashboard cache --clear`.")
        return out

    def batches(self, rows: torch.Tensor, batch: int, *, pin: bool = False, prefetch: int = 2) -> Iterator[torch.Tensor]:
        """Yield ``read(rows[i:i + batch])`` in order, reading ahead on a background thread."""
        spans = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        if len(spans) <= 1:
            yield from (self.read(s, pin=pin) for s in spans)
            return
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def reader() -> None:
            try:
                for s in spans:
                    if stop.is_set():
                        return
                    q.put(self.read(s, pin=pin))
            except BaseException as exc:  # handed to the consumer, raised there
                q.put(exc)

        t = threading.Thread(target=reader, name="imagestore-prefetch", daemon=True)
        t.start()
        try:
            for _ in spans:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():  # unblock a reader waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)


class RowView:
    """A list of rows of an on-disk store, indexed like a tensor: ``len(v)``, ``v[idx]`` -> a tensor.

    ``v[idx]`` (an index tensor, a slice or an int) reads just those rows. :meth:`plan` announces an
    epoch's batches so they are read ahead on a background thread (into pinned memory when
    ``pin``), ready when the loop asks for them.
    """

    def __init__(self, read: Callable[..., torch.Tensor], rows: torch.Tensor, *, pin: bool = False) -> None:
        self._read, self.rows, self.pin = read, rows, pin
        self._ahead: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self.rows)

    def _fetch(self, idx: torch.Tensor) -> torch.Tensor:
        return self._read(self.rows[idx], pin=self.pin) if self.pin else self._read(self.rows[idx])

    def __getitem__(self, idx: torch.Tensor | slice | int) -> torch.Tensor:
        if isinstance(idx, int):
            return self[torch.tensor([idx])][0]
        if isinstance(idx, slice):
            idx = torch.arange(len(self.rows))[idx]
        if self._ahead is not None:
            try:
                planned, batch = next(self._ahead)
            except StopIteration:
                planned, batch = None, None
            if planned is not None and torch.equal(planned, idx):
                return batch
            self._ahead = None  # the loop went its own way: read directly from now on
            self._stop.set()
        return self._fetch(idx)

    def plan(self, batches: Sequence[torch.Tensor], prefetch: int = 3) -> None:
        """Read these index batches ahead, in this order (the next ``v[idx]`` calls should ask for them)."""
        batches = list(batches)
        self._stop.set()  # an earlier plan's reader ends
        stop = self._stop = threading.Event()

        def put(q: queue.Queue, item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))

            def reader() -> None:
                try:
                    for b in batches:
                        if not put(q, (b, self._fetch(b))):
                            return
                except BaseException as exc:  # handed to the consumer
                    put(q, exc)

            threading.Thread(target=reader, name="rowview-prefetch", daemon=True).start()
            for _ in batches:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item

        self._ahead = gen() if len(batches) > 1 else None


def split_digests(split: DatasetSplit) -> dict[Path, str]:
    """``{path: sha256}`` of every train and val image (from the scan; hashed here if it has none)."""
    out = dict(split.digests)
    for s in split.train + split.val:
        p = Path(s.path)
        if p not in out:
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _key(digests: Sequence[str], load_size: int, interpolation: str) -> str:
    files = hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()
    return cache.digest_key({"v": 1, "load_size": load_size, "interpolation": interpolation, "files": files})


def _reuse(fd: int, want: dict[str, int], load_size: int, interpolation: str) -> set[str]:
    """Copy rows that entries already on disk hold (same load size and interpolation). Returns: digests copied."""
    done: set[str] = set()
    item = 3 * load_size**2
    for e in cache.list_entries():
        if e["kind"] != "images" or e.get("load_size") != load_size or e.get("interpolation") != interpolation:
            continue
        try:
            donor = ImageStore(Path(e["path"]), load_size)
        except OSError:
            continue
        try:
            for d, r in donor.row_of.items():
                if d in want and d not in done:
                    os.pwrite(fd, os.pread(donor._fd, item, r * item), want[d] * item)
                    done.add(d)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC: the build fails whole
                raise
        finally:
            donor.close()
        if len(done) == len(want):
            break
    return done


def _build(tmp: Path, digests: list[str], paths: dict[str, Path], L: int, interpolation: str, progress: Progress | None) -> None:
    from .parallel import decode_rows

    want = {d: i for i, d in enumerate(digests)}
    (tmp / _INDEX).write_text("\n".join(digests) + "\n")
    with open(tmp / _FILE, "wb") as fh:
        fh.truncate(len(digests) * 3 * L * L)
    fd = os.open(tmp / _FILE, os.O_WRONLY)
    try:
        have = _reuse(fd, want, L, interpolation)
    finally:
        os.close(fd)
    jobs = [(want[d], str(paths[d]), d) for d in digests if d not in have]
    failed = decode_rows(jobs, tmp / _FILE, L, interpolation, progress) if jobs else []
    if failed:
        row, reason = failed[0]
        raise DataError(
            f"Cannot use image {paths[digests[row]]}: {reason}. Re-scan the data folder or remove the file ({len(failed)} image(s) failed)."
        )
    with open(tmp / _FILE, "rb+") as fh:
        os.fsync(fh.fileno())


def open_images(
    split: DatasetSplit, load_size: int, interpolation: str = "bicubic", *, progress: Progress | None = None, image_size: int | None = None
) -> tuple[ImageStore, dict[Path, str]]:
    """The decoded images of every train and val sample, from the cache or decoded now on every core.

    Args:
        split: the scan (its digests key the entry).
        load_size: side of the stored squares.
        interpolation: resize filter (``bicubic``, ``bilinear``, ``nearest``).
        progress: ``(decoded, to decode)`` while building.
        image_size: the model input (crop) size the entry is decoded for, recorded for ``cache --list``
            (not part of the key: every crop of the same ``load_size`` shares the entry).

    Returns:
        The store and ``{path: digest}`` (for :meth:`ImageStore.rows`).

    Raises:
        DataError: an image cannot be decoded (nothing is cached then).
        cache.CacheError: the cache cannot be written (disk full, no permission).
    """
    L, interpolation = int(load_size), str(interpolation).lower()
    by_path = split_digests(split)
    paths = {d: p for p, d in sorted(by_path.items(), reverse=True)}
    digests = sorted(paths)
    key = _key(digests, L, interpolation)
    hit = cache.open_entry("images", key)
    if hit is None:
        meta = {
            "load_size": L,
            "interpolation": interpolation,
            "images": len(digests),
            "root": str(split.root),
            **({"image_size": int(image_size)} if image_size else {}),
        }
        with cache.build_entry("images", key, meta=meta, need_bytes=len(digests) * 3 * L * L) as tmp:
            if tmp is not None:
                _build(tmp, digests, paths, L, interpolation, progress)
        path = cache.open_entry("images", key)
        if path is None:  # evicted at once: the bound is smaller than this one entry
            raise cache.CacheError(
                f"The decoded images need {cache.human_bytes(len(digests) * 3 * L * L)}, more "
                f"than the cache bound (TL_CACHE_MAX_GB); raise it or lower the image size."
            )
    store = ImageStore(hit or path, L)
    store.hit = hit is not None
    return store, by_path


_DEFAULT_MEMORY_GB = 4.0


class DecodedImageCache:
    """Decode + resize each image once; keep uint8 CHW tensors in memory so epochs never decode JPEGs again.

    Each image is loaded with :func:`load_rgb` (JPEG draft at ``load_size``) and prepared by
    :func:`resize_center_square` (shorter side to ``load_size``, center square crop).

    Args:
        load_size: Side of the cached square images, in pixels.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``; anything else -> bicubic.
        max_bytes: Memory budget. ``None``: env ``TL_MAX_CACHE_GB`` (GiB) or 4 GiB.

    Raises:
        ValueError: ``load_size`` or ``max_bytes`` is not positive.
    """

    def __init__(self, load_size: int, *, interpolation: str = "bicubic", max_bytes: int | None = None):
        if isinstance(load_size, bool) or not isinstance(load_size, int) or load_size <= 0:
            raise ValueError(f"load_size={load_size!r} must be a positive int, e.g. 224.")
        if max_bytes is None:
            max_bytes = int(env_number("TL_MAX_CACHE_GB", _DEFAULT_MEMORY_GB) * 2**30)
        if max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes!r} must be positive (or None for the default).")
        self.load_size = load_size
        self.interpolation = str(interpolation).lower()
        self.max_bytes = int(max_bytes)
        self._item_bytes = 3 * load_size * load_size
        self._store: dict[Path, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held by cached tensors."""
        return len(self._store) * self._item_bytes

    def __len__(self) -> int:
        return len(self._store)

    def _check_budget(self, n_images: int) -> None:
        need = n_images * self._item_bytes
        if need > self.max_bytes:
            L = self.load_size
            raise DataError(
                f"{n_images} images at {L}x{L} need {need / 2**30:.2f} GiB, above the in-memory cache limit of "
                f"{self.max_bytes / 2**30:.2f} GiB. Lower the image size or use fewer images (TL_MAX_CACHE_GB)."
            )

    def _decode(self, path: Path) -> torch.Tensor:
        # through the module, so a test (or a caller) can wrap data.load_rgb
        return data.resize_center_square(data.load_rgb(path, draft_size=self.load_size), self.load_size, self.interpolation)

    def get(self, path: Path) -> torch.Tensor:
        """Return the cached tensor for ``path``, decoding it on first use.

        Args:
            path: Image file.

        Returns:
            uint8 tensor ``(3, load_size, load_size)``.

        Raises:
            DataError: The image cannot be loaded, or caching it would exceed ``max_bytes``.
        """
        key = Path(path)
        hit = self._store.get(key)
        if hit is not None:
            return hit
        self._check_budget(len(self._store) + 1)
        tensor = self._decode(key)
        with self._lock:
            if key not in self._store:
                self._check_budget(len(self._store) + 1)
                self._store[key] = tensor
            return self._store[key]

    def stack(self, samples: Sequence[Sample], *, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``samples`` from the cache, decoding only images not cached yet.

        Args:
            samples: Samples to stack, in order.
            workers: Decode threads for the missing images (PIL releases the GIL).

        Returns:
            ``(images, labels)``: uint8 ``(N, 3, L, L)`` and int64 ``(N,)``.

        Raises:
            DataError: An image cannot be loaded, or the cache would exceed ``max_bytes``
                (checked before any decoding).
        """
        missing = list(dict.fromkeys(Path(s.path) for s in samples if Path(s.path) not in self._store))
        self._check_budget(len(self._store) + len(missing))
        if missing:
            with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
                list(pool.map(self.get, missing))
        L = self.load_size
        if not samples:
            return torch.empty((0, 3, L, L), dtype=torch.uint8), torch.empty((0,), dtype=torch.int64)
        images = torch.stack([self._store[Path(s.path)] for s in samples])
        labels = torch.tensor([int(s.label) for s in samples], dtype=torch.int64)
        return images, labels
