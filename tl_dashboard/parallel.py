"""Decode on every core: the scan's full check and the decoded-image cache's build, in worker processes.

PIL's decoders release the GIL but Python-level work around them (opening, EXIF, crop, conversion)
does not, so threads top out well below the core count; worker processes do not. On Linux the
workers are forked, as torch's own ``DataLoader`` workers are: they start at once and share the
caller's pages; they only run PIL, numpy and hashlib (never torch, whose thread pool does not
survive a fork). Elsewhere they are spawned. Small jobs (under :data:`INLINE_BELOW` files) run on
two threads in this process instead: starting workers would cost more than it saves.

Each worker reads a file's bytes once, hashes them (the content digest the caches are keyed by) and
decodes those same bytes, so a cached row always matches its digest.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

__all__ = ["INLINE_BELOW", "decode_rows", "verify_files", "worker_count"]

INLINE_BELOW = 512
_CHUNK = 64
_BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
Progress = Callable[[int, int], None]


def worker_count() -> int:
    """Worker processes to use: ``$TL_WORKERS``, else the cores this process may run on."""
    raw = os.environ.get("TL_WORKERS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _executor(n_jobs: int) -> Executor:
    if n_jobs < INLINE_BELOW or worker_count() == 1:
        return ThreadPoolExecutor(max_workers=2)
    import multiprocessing as mp

    method = "fork" if sys.platform.startswith("linux") else "spawn"  # a fork server would import __main__ (torch)
    return ProcessPoolExecutor(max_workers=worker_count(), mp_context=mp.get_context(method))


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _verify_one(path: str, limit: int) -> tuple[str, str | None]:
    from .data import _VALIDATE_DRAFT, MIN_IMAGE_SIDE, _decode, _Rejected

    try:
        blob = _read(path)
    except OSError as exc:
        return "", f"unreadable file: {(exc.strerror or type(exc).__name__)}"
    digest = hashlib.sha256(blob).hexdigest()
    try:  # from the path (now in the page cache): Pillow's messages then name the file
        _decode(Path(path), limit, _VALIDATE_DRAFT, MIN_IMAGE_SIDE)
    except _Rejected as exc:
        return digest, exc.args[0]
    return digest, None


def _verify_chunk(paths: Sequence[str], limit: int) -> list[tuple[str, str | None]]:
    from .data import _truncation_detected

    with _truncation_detected():
        return [_verify_one(p, limit) for p in paths]


def _chunks(items: Sequence, size: int = _CHUNK) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run(fn: Callable, chunks: list[Sequence], args: tuple, total: int, progress: Progress | None) -> list:
    out: list = []
    done = 0
    with _executor(total) as pool:
        futures = [pool.submit(fn, c, *args) for c in chunks]
        for c, f in zip(chunks, futures):
            out.extend(f.result())
            done += len(c)
            if progress is not None:
                progress(done, total)
    return out


def verify_files(paths: Sequence[str], limit: int, progress: Progress | None = None) -> list[tuple[str, str | None]]:
    """Read, hash and fully decode each file (JPEGs at reduced scale), header checks first.

    Returns:
        ``(sha256 hex digest, skip reason or None)`` per path, in order (digest ``""`` if unreadable).
    """
    return _run(_verify_chunk, _chunks(list(paths)), (int(limit),), len(paths), progress)


def _decode_chunk(jobs: Sequence[tuple[int, str, str]], out_file: str, load_size: int, interpolation: str) -> list[tuple[int, str | None]]:
    """Decode ``(row, path, digest)`` jobs into rows of the raw ``out_file``; returns failures only."""
    from .data import _decode, _Rejected, _resolve_max_pixels
    from .imageops import square_array

    item, limit = 3 * load_size * load_size, _resolve_max_pixels(None)
    failed = []
    fd = os.open(out_file, os.O_WRONLY)
    try:
        for row, path, digest in jobs:
            try:
                blob = _read(path)
                if hashlib.sha256(blob).hexdigest() != digest:
                    failed.append((row, "the file changed during the run"))
                    continue
                img = _decode(io.BytesIO(blob), limit, load_size)
            except OSError as exc:
                failed.append((row, f"unreadable file: {exc.strerror or type(exc).__name__}"))
                continue
            except _Rejected as exc:
                failed.append((row, _BYTESIO.sub(repr(Path(path).name), exc.args[0])))
                continue
            arr = square_array(img, load_size, interpolation)
            os.pwrite(fd, arr.tobytes(), row * item)  # OSError (disk full) propagates: the build fails whole
    finally:
        os.close(fd)
    return failed


def decode_rows(
    jobs: Sequence[tuple[int, str, str]], out_file: str | Path, load_size: int, interpolation: str, progress: Progress | None = None
) -> list[tuple[int, str]]:
    """Decode images into a raw uint8 file of ``(N, 3, L, L)`` rows, on every core.

    Args:
        jobs: ``(row, path, expected sha256)``; a file whose bytes no longer match fails.
        out_file: existing file, already sized to hold every row.
        load_size, interpolation: see :func:`square_array`.
        progress: called with ``(done, total)``.

    Returns:
        ``(row, reason)`` for each image that could not be decoded (its row stays zero).
    """
    return _run(_decode_chunk, _chunks(list(jobs)), (str(out_file), int(load_size), str(interpolation)), len(jobs), progress)
