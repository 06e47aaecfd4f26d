"""Limits before start: settings a run cannot take are refused before anything is recorded.

:func:`check_config` raises :class:`~tl_dashboard.config.ConfigError` with one line naming the
bad value and the valid ones (a ViT's fixed input size, a batch larger than the training set,
epochs < 1, ...). :func:`allowed_image_sizes` tells a page which sizes a model takes, so its
widgets can offer only those.

Example:
    >>> allowed_image_sizes("vit_tiny_patch16_224")
    (224, 224)
    >>> allowed_image_sizes("efficientnet_lite0")
    (32, 1024)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig

__all__ = ["MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE", "allowed_image_sizes", "check_config"]

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


def _pretrained_cfg(model_name: str) -> Any:
    import timm

    return timm.get_pretrained_cfg(model_name) if timm.is_model(model_name) else None


def allowed_image_sizes(model_name: str) -> tuple[int, int]:
    """The inclusive range of input sizes ``model_name`` takes: one size for a fixed-size ViT."""
    cfg = _pretrained_cfg(model_name)
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        size = int(cfg.input_size[-1])
        return size, size
    return MIN_IMAGE_SIZE, MAX_IMAGE_SIZE


def _check_numbers(c: TrainConfig) -> None:
    if c.epochs < 0:
        raise ConfigError(f"--epochs {c.epochs}: train at least 1 epoch, or 0 for auto.")
    if c.batch_size < 1:
        raise ConfigError(f"--batch-size {c.batch_size}: use 1 or more images per step.")
    if c.nproc < 1:
        raise ConfigError(f"--nproc {c.nproc}: use 1 or more processes.")
    if c.lr < 0:
        raise ConfigError(f"--lr {c.lr:g}: the learning rate must be positive, e.g. 1e-3, or 0 for auto.")
    if c.weight_decay < 0:
        raise ConfigError(f"--weight-decay {c.weight_decay:g}: use 0 or more.")
    if not 0 < c.val_fraction < 1:
        raise ConfigError(f"--val-fraction {c.val_fraction:g}: use a share between 0 and 1, e.g. 0.2.")
    if not 0 <= c.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing {c.label_smoothing:g}: use 0 <= smoothing < 1.")
    epochs = c.epochs or 10  # auto with a schedule: 10 epochs (auto_head.resolve)
    if c.unfreeze_at == 1 or c.unfreeze_at < 0 or c.unfreeze_at > epochs:
        raise ConfigError(f"--unfreeze-at {c.unfreeze_at}: pick an epoch in 2..{epochs} (or 0 for no schedule).")
    if getattr(c, "patience", 0) < 0:
        raise ConfigError(f"--patience {c.patience}: use 0 (off) or a number of epochs.")


def _check_model(c: TrainConfig) -> None:
    import timm

    from .backbones import BackboneError

    if not timm.is_model(c.model):
        raise BackboneError(f"Unknown model {c.model!r}. `tl-dashboard layers --list` shows the curated ones; any timm name works.")
    if c.weights not in ("auto", "none") and not Path(c.weights).is_file():
        raise BackboneError(f"Weights file not found: {c.weights}. Give a .safetensors or .pth file, or --weights auto/none.")
    lo, hi = allowed_image_sizes(c.model)
    if c.image_size and not lo <= c.image_size <= hi:
        valid = f"{lo} (its fixed input size)" if lo == hi else f"{lo}..{hi}"
        raise ConfigError(f"--image-size {c.image_size}: {c.model} takes {valid}, or 0 for its own size.")


def check_config(config: TrainConfig, split: Any = None, *, check_freeze: bool = True) -> None:
    """Refuse, with one line naming the valid values, settings this run cannot take.

    Args:
        config: the run's settings.
        split: the scanned data (``data.DatasetSplit``); with it, the batch is checked against
            the training set.
        check_freeze: also parse the freeze spec against the model's blocks (builds the model
            skeleton once, no weights).

    Raises:
        ConfigError, backbones.BackboneError, layers.LayersError: one line each.
    """
    _check_numbers(config)
    _check_model(config)
    default_batch = TrainConfig.__dataclass_fields__["batch_size"].default
    # the default adapts (a step then takes every training image); a batch the user chose is honoured or refused
    if split is not None and config.batch_size > len(split.train) and config.batch_size != default_batch:
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(split.train)} training images; use 1..{len(split.train)}."
        )
    if check_freeze:
        from .layers import describe_blocks, parse_freeze

        parse_freeze(config.freeze, describe_blocks(config.model, None), config.bn_mode)
    from .engine import resolve_device

    resolve_device(config.device)
