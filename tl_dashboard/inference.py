"""A finished run's model, and images prepared for it exactly as training prepared them.

The base of :mod:`~tl_dashboard.metrics`, :mod:`~tl_dashboard.explain` and
:mod:`~tl_dashboard.export`: :func:`load_run` reads a run's folder (``model.safetensors``,
``labels.json``, ``preprocessing.json``, ``config.json``); images are decoded and resized by
:mod:`~tl_dashboard.data` (shorter side to ``load_size``, centre crop), centre-cropped to
``image_size`` and normalised ``(x / 255 - mean) / std`` by :mod:`~tl_dashboard.engine`.

Nothing here caches a model: every :func:`load_run` reads the checkpoint. A caller that needs the
same model often (the Evaluate page) keeps the :class:`LoadedRun` itself (``st.cache_resource``)
and passes it to every function that takes a run. This module never imports streamlit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from .data import DatasetSplit, DecodedImageCache, load_rgb, resize_center_square, scan_images, to_rgb
from .engine import Normalizer, TrainConfig, center_crop, load_checkpoint
from .errors import UserError
from .formatting import no_completed_epoch
from .runs import CHECKPOINT, RunStore

__all__ = [
    "EvaluateError",
    "LoadedRun",
    "ImageInput",
    "RunSource",
    "load_run",
    "as_loaded",
    "list_evaluable_runs",
    "decoded_cache",
    "model_input",
    "load_inputs",
    "batched_logits",
    "val_split",
]

BATCH = 64
_EVALUABLE_STATUSES = ("finished", "stopped")

ImageInput = Image.Image | str | Path | bytes


class EvaluateError(UserError, ValueError):
    """A run that cannot be evaluated or exported; str() names the run and the fix."""


@dataclass
class LoadedRun:
    """A run's model (eval mode, CPU, no gradients) with its class names, preprocessing meta and config.

    Treat it as read-only: the Evaluate page shares one between its sessions.
    """

    run_dir: Path
    model: nn.Module
    classes: list[str]
    meta: dict[str, Any]
    config: dict[str, Any]
    run_id: str = ""
    summary: dict[str, Any] | None = None  # the store's summary of the run, when loaded from a store


RunSource = RunStore | str | Path | LoadedRun


def _run_dir(source: RunStore | str | Path, run_id: str | None) -> Path:
    if isinstance(source, RunStore):
        if not run_id:
            raise EvaluateError("A RunStore needs a run_id; pass run_id=... or the run's folder instead.")
        if source.get_run(run_id) is None:
            raise EvaluateError(f"No run {run_id!r} in {source.root}. `tl-dashboard runs` lists the runs there.")
        has_model, run_dir = source.has_checkpoint(run_id), source.run_dir(run_id)
    else:
        run_dir = Path(source) if run_id is None else Path(source) / run_id
        has_model = (run_dir / CHECKPOINT).is_file()
    if not has_model:
        raise EvaluateError(
            f"Run folder {run_dir} has no {CHECKPOINT}: the run has not finished an epoch yet "
            "(or failed before one). Pick a finished or stopped run."
        )
    return run_dir


def _read_config(run_dir: Path, run: dict[str, Any] | None) -> dict[str, Any]:
    if run and run.get("config"):
        return dict(run["config"])
    path = run_dir / "config.json"
    if not path.is_file():
        raise EvaluateError(f"Run folder {run_dir} has no config.json, so its data folder and split are unknown.")
    return json.loads(path.read_text())


def load_run(source: RunStore | str | Path, run_id: str | None = None) -> LoadedRun:
    """Load a run's checkpoint (every call reads it; keep the result to reuse the model).

    Args:
        source: a :class:`RunStore` (with ``run_id``) or a run folder.
        run_id: the run's id when ``source`` is a store (or a runs root folder).

    Returns:
        A :class:`LoadedRun`; the model is in eval mode on the CPU. Treat it as read-only.

    Raises:
        EvaluateError: unknown run, or no checkpoint yet.
    """
    run_dir = _run_dir(source, run_id)
    run = source.get_run(run_id) if isinstance(source, RunStore) and run_id else None
    model, classes, meta = load_checkpoint(run_dir)
    model.requires_grad_(False)
    return LoadedRun(run_dir, model, classes, meta, _read_config(run_dir, run), run_id or run_dir.name, (run or {}).get("summary"))


def as_loaded(source: RunSource, run_id: str | None = None) -> LoadedRun:
    """``source`` itself when it is a :class:`LoadedRun`, else :func:`load_run` of it."""
    return source if isinstance(source, LoadedRun) else load_run(source, run_id)


def list_evaluable_runs(store: RunStore) -> list[dict[str, Any]]:
    """Finished and stopped runs that have a checkpoint of a completed epoch, newest first (rows of
    ``store.list_runs``). A run stopped before its first epoch is left out (older stores kept its
    mid-epoch weights as a checkpoint)."""
    return [r for r in store.list_runs(_EVALUABLE_STATUSES) if store.has_checkpoint(r["id"]) and not no_completed_epoch(r.get("summary"))]


# -- preprocessing: exactly as in training (data + engine own it) ------------------------------
def decoded_cache(meta: dict[str, Any]) -> DecodedImageCache:
    """An image cache that decodes and resizes as the run's training did."""
    return DecodedImageCache(int(meta["load_size"]), interpolation=meta.get("interpolation", "bicubic"))


def model_input(x_u8: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Decoded uint8 squares (N, 3, L, L) -> the normalised centre crops (N, 3, S, S) the model takes."""
    return Normalizer(meta["mean"], meta["std"])(center_crop(x_u8, int(meta["image_size"])))


def _square(item: ImageInput, i: int, load: int, interpolation: str) -> tuple[torch.Tensor, Image.Image, str]:
    if isinstance(item, Image.Image):
        img = to_rgb(item)
        return (resize_center_square(img, load, interpolation), img, Path(getattr(item, "filename", "") or f"image {i + 1}").name)
    if isinstance(item, (bytes, bytearray, str, Path)):
        source = bytes(item) if isinstance(item, (bytes, bytearray)) else Path(item)
        return (
            resize_center_square(load_rgb(source, draft_size=load), load, interpolation),
            load_rgb(source),
            source.name if isinstance(source, Path) else f"image {i + 1}",
        )
    raise TypeError(f"images[{i}] is a {type(item).__name__}; give a PIL image, a file path or bytes.")


def load_inputs(images: Sequence[ImageInput], meta: dict[str, Any]) -> tuple[torch.Tensor, list[Image.Image], list[str]]:
    """Images -> (normalised batch (N, 3, S, S), upright RGB images, names).

    Paths and bytes are decoded as training decodes them (``data.load_rgb``, JPEG draft at
    ``load_size``); every image then gets training's resize and crop (``data.resize_center_square``).

    Raises:
        ValueError: no images. TypeError: an item that is not a PIL image, path or bytes.
        data.DataError: a path or upload that is not a readable image.
    """
    load, interpolation = int(meta["load_size"]), meta.get("interpolation", "bicubic")
    items = [_square(item, i, load, interpolation) for i, item in enumerate(images)]
    if not items:
        raise EvaluateError("No images given; pass at least one PIL image, path or bytes.")
    return model_input(torch.stack([t for t, _, _ in items]), meta), [s for _, s, _ in items], [n for _, _, n in items]


@torch.inference_mode()
def batched_logits(model: nn.Module, x: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """float32 logits of ``x`` in batches of ``batch`` (no gradients)."""
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).float()


def val_split(loaded: LoadedRun) -> DatasetSplit:
    """The run's validation split, rebuilt from its data folder, seed and ``val_fraction``.

    Raises:
        EvaluateError: the data folder's classes changed since training.
        data.DataError: the data folder is gone or unreadable.
    """
    cfg = TrainConfig.from_dict(loaded.config)
    split = scan_images(cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if list(split.classes) != list(loaded.classes):
        raise EvaluateError(
            f"The data folder {cfg.data_dir} now has classes {split.classes}, but run {loaded.run_dir.name} was "
            f"trained on {list(loaded.classes)}. Restore the folder, or evaluate a run trained on the folder as it is now."
        )
    return split
