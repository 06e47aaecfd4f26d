"""What fits: the disk space a run will write, and the host's limits on uploaded data.

A run is refused before it starts when its checkpoints cannot fit (:func:`check_run_space`,
and :func:`check_run_start` when a run from the queue starts). Uploads and imports are
refused before a byte is written when they are bigger than the host allows or than the disk holds
(:func:`check_upload`). The host sets the limits with environment variables:

- ``TL_MAX_UPLOAD_MB``: the largest single upload (a zip, or one batch of images), default 1024.
- ``TL_MAX_DATASETS_GB``: the most all uploaded data sets together may take under
  ``TL_DATASETS_DIR``, default unlimited (0).

Example:
    >>> run_bytes_needed(total_params=3_400_000, trainable_params=2_600, epochs=3, steps_per_epoch=10)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .storage import check_free_space, dir_size, human_bytes

__all__ = [
    "UploadTooLarge",
    "run_bytes_needed",
    "check_run_space",
    "check_run_start",
    "max_upload_bytes",
    "max_datasets_bytes",
    "check_upload",
    "CHECKPOINT_FILES",
]

# Model-sized files a run keeps in its folder (model.safetensors, and resume.pt with the optimizer
# state besides); one more temporary copy of resume.pt exists while it is replaced.
CHECKPOINT_FILES = 2
_SMALL_FILES = 256 * 1024  # labels/preprocessing/config/summary/run.json
_BYTES_PER_STEP = 200  # a step_metrics row (+ index) in runs.db, and its share of run.json


class UploadTooLarge(UserError, ValueError):
    """An upload over the host's per-upload or total data limit; names the sizes, the limit and its variable."""


def run_bytes_needed(total_params: int, trainable_params: int = 0, epochs: int = 1, steps_per_epoch: int = 0, dtype_bytes: int = 4) -> int:
    """Bytes a run writes under the runs folder at its peak: checkpoints (+ one being replaced) and metrics.

    Args:
        total_params: every parameter of the model (the checkpoint holds them all).
        trainable_params: those the optimizer updates (kept for a resume file, if one is written).
        epochs, steps_per_epoch: for the metrics rows.
        dtype_bytes: bytes per stored parameter (float32).
    """
    model = total_params * dtype_bytes
    resume = model + 2 * trainable_params * 4  # resume.pt: the model + AdamW's two moments per trainable parameter
    return model + 2 * resume + _SMALL_FILES + epochs * steps_per_epoch * _BYTES_PER_STEP


RUN_FIX = "free space there (delete old runs or data sets) or set TL_RUNS_DIR to a larger disk, then start the run again"


def run_files_what(epochs: int) -> str:
    """What a run writes, for a disk-full message ("a run of 3 epoch(s) (its checkpoint, ...)")."""
    return f"{f'a run of {epochs} epoch(s)' if epochs else 'a run'} (its checkpoint, its resume point and a copy while it is replaced, and metrics)"


def check_run_space(runs_folder: str | Path, need: int, epochs: int) -> int:
    """Refuse a run whose files cannot fit: :class:`~tl_dashboard.storage.DiskFull` with the numbers."""
    return check_free_space(runs_folder, need, run_files_what(epochs), fix=RUN_FIX)


def check_run_start(run_dir: str | Path, info: dict[str, Any]) -> int:
    """:func:`check_run_space` for the engine's ``on_run_start`` info (params, epochs, steps per epoch)."""
    need = run_bytes_needed(
        int(info["trainable_params"]) + int(info["frozen_params"]),
        int(info["trainable_params"]),
        int(info["epochs"]),
        int(info["steps_per_epoch"]),
    )
    return check_run_space(run_dir, need, int(info["epochs"]))


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number; set it to a size (e.g. {name}={default:g}) or unset it.") from None


def max_upload_bytes() -> int:
    """The largest single upload (``TL_MAX_UPLOAD_MB``, default 1024 MB); 0 = no limit."""
    return int(_env_float("TL_MAX_UPLOAD_MB", 1024) * 1e6)


def max_datasets_bytes() -> int:
    """The most all uploaded data sets may take together (``TL_MAX_DATASETS_GB``); 0 = no limit (default)."""
    return int(_env_float("TL_MAX_DATASETS_GB", 0) * 1e9)


def check_upload(upload_bytes: int, write_bytes: int, dest: str | Path, what: str = "this upload") -> None:
    """Refuse an upload before writing a byte: over the per-upload limit, over the total, or over the free space.

    Args:
        upload_bytes: the size of what was uploaded (a zip's own size, or the images' total).
        write_bytes: what extracting/saving it will write (a zip's uncompressed images).
        dest: the folder it goes to (under ``TL_DATASETS_DIR``).
        what: for the message, e.g. "the zip 'cats.zip'".

    Raises:
        UploadTooLarge: over ``TL_MAX_UPLOAD_MB`` or ``TL_MAX_DATASETS_GB``.
        DiskFull: the disk holding ``dest`` has not enough free space.
    """
    from .importer import datasets_dir

    limit = max_upload_bytes()
    if limit and upload_bytes > limit:
        raise UploadTooLarge(
            f"{what} is {human_bytes(upload_bytes)}, over this server's limit of "
            f"{human_bytes(limit)} per upload (TL_MAX_UPLOAD_MB); upload fewer or smaller images, "
            "or ask the host to raise the limit."
        )
    total = max_datasets_bytes()
    if total:
        root = datasets_dir()
        used = dir_size(root)
        if used + write_bytes > total:
            raise UploadTooLarge(
                f"{what} needs {human_bytes(write_bytes)}, but the uploaded data sets in {root} "
                f"already take {human_bytes(used)} of this server's {human_bytes(total)} "
                "(TL_MAX_DATASETS_GB); delete data sets you no longer need, or ask the host to raise it."
            )
    check_free_space(dest, write_bytes, what, fix="free space there (delete data sets or old runs) or set TL_DATASETS_DIR to a larger disk")
