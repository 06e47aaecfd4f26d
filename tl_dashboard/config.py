"""A run's settings, declared once: :class:`TrainConfig`.

Each field carries its help text (and its choices, where there are few) in its metadata, so the
CLI's train options (:func:`cli_options`) and the UI's coercions (:func:`coerce`) derive from this
one declaration: a new setting is one edit here.

Example:
    >>> cfg = TrainConfig.from_dict({"data_dir": "sample_data/emoji3", "epochs": "3", "unknown": 1})
    >>> cfg.epochs, cfg.model
    (3, 'efficientnet_lite0')
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterator

from .errors import UserError

__all__ = ["TrainConfig", "ConfigError", "config_fields", "coerce"]


class ConfigError(UserError, ValueError):
    """A setting the run cannot take: the message names the value and the valid ones."""


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


@dataclass
class TrainConfig:
    """Everything that defines a run. Same config + same data + same seed -> the same numbers."""

    data_dir: str = field(metadata={"help": "folder with one sub-folder of images per class (or train/ and val/)"})
    model: str = _f("efficientnet_lite0", "timm model name (any timm name works)")
    weights: str = _f("auto", "auto (file > HF cache > hub > bundled > random) | none | PATH to .safetensors/.pth")
    freeze: str = _f("head", "head (linear probe) | none (full fine-tune) | N (first N blocks) | BLOCK,BLOCK", cli=False)
    bn_mode: str = _f("frozen", "BatchNorm in frozen blocks: frozen = running statistics, train = update them", ("frozen", "train"))
    epochs: int = _f(
        0, "passes over the training images; 0 = auto (head only on cached features: until the solver converges; otherwise 10)"
    )
    patience: int = _f(0, "early stopping: end the run when validation loss has not improved for this many epochs (0 = off)")
    batch_size: int = _f(32, "images per optimizer step")
    lr: float = _f(
        0.0,
        "AdamW learning rate, cosine-decayed per step to 1% of itself; 0 = auto (head only on "
        "cached features: a cross-validated L-BFGS fit, no learning rate; otherwise 1e-3)",
    )
    weight_decay: float = _f(0.01, "AdamW weight decay")
    image_size: int = _f(0, "input size in pixels; 0 = the weights' own size (224 for most)")
    val_fraction: float = _f(0.2, "share of each class held out for validation (ignored with train/ and val/)")
    seed: int = _f(0, "seed of the split, the head's init and the batch order")
    augment: bool = _f(False, "random resized crop, flip and colour jitter")
    feature_cache: str = _f("auto", "cache the frozen prefix's output when valid", ("auto", "off"))
    cache_max_mb: int = _f(2048, "bound on the feature cache's memory; above it, the full path runs")
    device: str = _f("auto", "auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    nproc: int = _f(1, "processes for DistributedDataParallel via torchrun (one per GPU; gloo on CPU)")
    unfreeze_at: int = _f(0, "unfreeze schedule: at the start of this epoch (0 = never) unfreeze the last frozen blocks")
    unfreeze_blocks: int = _f(2, "how many frozen blocks the schedule unfreezes")
    backbone_lr_scale: float = _f(0.1, "their learning rate relative to --lr (discriminative learning rate)")
    train_per_class: int = _f(
        0, "use at most N training images per class (seeded pick; 0 = all): a few-images experiment; validation keeps every image"
    )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a dict: unknown keys are ignored, values coerced to the field's type."""
        known = {f.name: f for f in fields(cls)}
        return cls(**{k: coerce(known[k], v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def field_type(f: Any) -> type:
    """The Python type of a :class:`TrainConfig` field (annotations are strings here)."""
    return _TYPES[str(f.type)]


def coerce(f: Any, value: Any) -> Any:
    """``value`` as the field's type (widgets hand back floats for ints, strings from the CLI/JSON)."""
    typ = field_type(f)
    if value is None:
        return f.default if f.default is not MISSING else value
    if typ is bool:
        return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
    if typ is int:
        return int(float(value))
    return typ(value)


def config_fields(cli_only: bool = False) -> Iterator[Any]:
    """The dataclass fields of :class:`TrainConfig` (only those with a plain CLI option if asked)."""
    for f in fields(TrainConfig):
        if not cli_only or (f.metadata.get("cli", True) and f.name != "data_dir"):
            yield f
