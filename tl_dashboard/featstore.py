"""The frozen prefix's outputs on disk: computed once per model, weights, depth, size and image set.

A run whose first K blocks stay frozen (and whose input never changes: no augmentation, BatchNorm
on running statistics) feeds every image through those blocks once. :func:`open_features` keeps
that output as a cache entry (:mod:`.cache`) keyed by

* the decoded images' entry (the files' content digests, load size, interpolation),
* the model name and a digest of its weights (every parameter and buffer but the classifier's),
* the frozen depth K, the image size, the normalisation, the memory format,

so a second run, every run of a sweep at that depth, the linear probe and the learning-rate finder
all skip the prefix, and a changed image, weight or setting can never meet stale features. Rows are
in the image entry's order: ``features.read(store.rows(samples, digests))``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import cache
from .imagestore import ImageStore

__all__ = ["FeatureStore", "open_features", "prefix_key", "weights_digest"]

_FILE = "features.bin"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}


def weights_digest(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, shapes, dtypes, values), classifier excluded."""
    skip: set[int] = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            skip = {id(t) for t in list(head.parameters()) + list(head.buffers())}
    h = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        if id(t) in skip:
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureStore:
    """A complete features entry: ``(N, *shape)`` rows aligned with an :class:`ImageStore`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.rows_n = int(meta["rows"])
        self.row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.hit = False
        self.build_seconds = 0.0

    @property
    def nbytes(self) -> int:
        return self.rows_n * self.row_bytes

    def read(self, rows: Sequence[int] | torch.Tensor, *, pin: bool = False) -> torch.Tensor:
        """Features of the given rows (a new tensor; pinned memory when ``pin``), read with ``pread``."""
        rows_t = torch.as_tensor(rows, dtype=torch.int64)
        out = torch.empty((len(rows_t), *self.shape), dtype=_TORCH_DTYPES[str(self.dtype)], pin_memory=pin)
        buf = out.numpy().reshape(len(rows_t), -1).view(np.uint8)
        fd = os.open(self.path / _FILE, os.O_RDONLY)
        try:
            for j, r in enumerate(rows_t.tolist()):
                if os.preadv(fd, [buf[j]], r * self.row_bytes) != self.row_bytes:
                    raise cache.CacheError(f"The feature cache {self.path} is damaged; run `tl-dashboard cache --clear`.")
        finally:
            os.close(fd)
        return out


def _build(
    tmp: Path, store: ImageStore, compute: Callable[[torch.Tensor], torch.Tensor], batch: int, progress: Callable[[int, int], None] | None
) -> dict[str, Any]:
    rows = torch.arange(len(store))
    info: dict[str, Any] = {}
    done = 0
    with open(tmp / _FILE, "wb") as fh:
        for xb in store.batches(rows, batch):
            out = compute(xb).detach().to("cpu").contiguous()
            if out.dtype not in (torch.float32, torch.float16, torch.float64):
                out = out.float()
            if not info:
                info = {"shape": list(out.shape[1:]), "dtype": str(out.numpy().dtype), "rows": len(store)}
                need = len(store) * out[0].numel() * out.element_size()
                cache._check_space(tmp, need)
            fh.write(out.numpy().tobytes())
            done += len(xb)
            if progress is not None:
                progress(done, len(store))
        fh.flush()
        os.fsync(fh.fileno())
    return info


def prefix_key(prep: Any, depth: int | str, channels_last: bool) -> dict[str, Any]:
    """The key parts of a prepared run's frozen prefix (see :func:`open_features`): ``depth`` is the
    number of frozen blocks, or ``"head"`` for the whole backbone up to the pooled pre-logits."""
    w = prep.weights
    return {
        "model": prep.config.model,
        "weights": weights_digest(prep.model),
        "depth": depth,
        "image_size": int(prep.image_size),
        "load_size": int(prep.load_size),
        "mean": list(w.mean),
        "std": list(w.std),
        "channels_last": bool(channels_last),
        "bn": "eval",
        "torch": torch.__version__,
    }


def open_features(
    store: ImageStore,
    key_parts: dict[str, Any],
    compute: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureStore:
    """The prefix's output for every row of ``store``, from the cache or computed now.

    Args:
        store: the decoded images.
        key_parts: everything else the output depends on (model, weights digest, depth, size,
            normalisation, memory format); JSON-able.
        compute: uint8 batch ``(B, 3, L, L)`` -> features ``(B, ...)``; called under inference mode.
        batch: images per call.
        progress: ``(done, total)`` while computing.

    Raises:
        cache.CacheError: the cache cannot be written (disk full, no permission).
    """
    import time

    key = cache.digest_key({"v": 1, "images": store.path.name, **key_parts})
    path = cache.open_entry("features", key)
    if path is not None:
        fs = FeatureStore(path, cache.entry_meta(path))
        fs.hit = True
        return fs
    t0 = time.perf_counter()
    meta: dict[str, Any] = {
        "images": len(store),
        "images_entry": store.path.name,
        **{k: v for k, v in key_parts.items() if isinstance(v, (str, int, float, bool))},
    }
    with cache.build_entry("features", key, meta=meta) as tmp:
        if tmp is not None:
            with torch.inference_mode():
                meta.update(_build(tmp, store, compute, batch, progress))
    path = cache.open_entry("features", key)
    if path is None:
        raise cache.CacheError("The frozen features are larger than the cache bound (TL_CACHE_MAX_GB); raise it.")
    fs = FeatureStore(path, cache.entry_meta(path))
    fs.build_seconds = time.perf_counter() - t0
    return fs
