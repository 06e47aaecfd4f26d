"""The training loop, its events and callbacks, and the frozen-prefix feature cache.

``train(config, callbacks)`` scans the data, builds the backbone, applies the freeze plan and
trains with AdamW and a cosine schedule. Two paths compute the same function:

* **feature cache** - when the first K blocks are frozen (BatchNorm on running statistics) and
  augmentation is off, their output never changes, so it is computed once per image (inference
  mode) and only the remaining blocks train, on the cached tensors;
* **fast frozen path** - otherwise the frozen prefix still runs without autograd, and images are
  decoded and resized once (``data.DecodedImageCache``), never per epoch.

Events, in order: ``on_run_start``, then per epoch ``on_epoch_start``, ``on_step_end`` per
batch and ``on_epoch_end``, finally ``on_run_end``; ``on_log`` carries human-readable notes
(e.g. why the feature cache was not used). A callback's ``should_stop()`` is checked between
batches.

Example:
    >>> result = train(TrainConfig(data_dir="sample_data/emoji3", epochs=2))
    >>> result.status, round(result.val_accuracy, 2)
    ('finished', 0.97)
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import WeightsInfo, create_backbone
from .data import DatasetSplit, DecodedImageCache, scan_images
from .layers import Block, FreezePlan, apply_freeze, count_params, list_blocks, parse_freeze, set_bn_mode, trainable_parameters

__all__ = [
    "EVENTS",
    "TrainConfig",
    "TrainResult",
    "Callback",
    "StopCheck",
    "TrainingStopped",
    "train",
    "resolve_device",
    "Prepared",
    "prepare",
    "save_checkpoint",
    "load_checkpoint",
    "shard_indices",
    "available_devices",
    "center_crop",
    "Normalizer",
]

EVENTS = ("on_run_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_run_end", "on_log")


@dataclass
class TrainConfig:
    """Everything that defines a run. Same config + same data + same seed -> the same numbers."""

    data_dir: str  # folder with one sub-folder per class (or train/ and val/)
    model: str = "efficientnet_lite0"  # any timm model name
    weights: str = "auto"  # "auto" (file > HF cache > hub > bundled > random) | "none" | a file path
    freeze: str = "head"  # "head" (linear probe) | "none" (full fine-tune) | "N" (first N blocks) | "a,b"
    bn_mode: str = "frozen"  # BatchNorm in frozen blocks: "frozen" (running stats) | "train" (update stats)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3  # AdamW learning rate, cosine-decayed per step to 1% of itself
    weight_decay: float = 0.01
    image_size: int = 0  # 0: the weights' own input size (224 for most)
    val_fraction: float = 0.2  # ignored when the folder has train/ and val/
    seed: int = 0
    augment: bool = False  # random resized crop + horizontal flip + colour jitter
    feature_cache: str = "auto"  # "auto": cache the frozen prefix when it is valid | "off"
    cache_max_mb: int = 2048  # bound on the feature cache's memory; above it, the full path runs
    device: str = "auto"  # "auto" (cuda > mps > cpu) | "cpu" | "cuda" | "cuda:1" | "mps"
    label_smoothing: float = 0.0
    nproc: int = 1  # >1: DistributedDataParallel over N processes launched with torchrun (one per GPU)
    unfreeze_at: int = 0  # unfreeze schedule: at the start of this epoch (0 = never) ...
    unfreeze_blocks: int = 2  # ... unfreeze the last N frozen blocks ...
    backbone_lr_scale: float = 0.1  # ... and train them at lr x this (discriminative learning rate)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped"
    val_accuracy: float
    best_val_accuracy: float
    train_seconds: float
    epochs: int  # completed epochs
    trainable_params: int
    frozen_params: int
    weights: dict[str, Any]
    skipped_files: list[dict[str, str]]
    classes: list[str]
    feature_cache: dict[str, Any]
    freeze_label: str
    device: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingStopped(Exception):
    """Raised inside the loop when a callback asks to stop; the run ends as 'stopped'."""


class Callback:
    """Base class: override the events you need. See :data:`EVENTS`."""

    def on_run_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, epoch: int) -> None: ...
    def on_step_end(self, step: dict[str, Any]) -> None: ...
    def on_epoch_end(self, row: dict[str, Any]) -> None: ...
    def on_run_end(self, result: TrainResult) -> None: ...
    def on_log(self, level: str, message: str) -> None: ...
    def should_stop(self) -> bool:
        return False


class StopCheck(Callback):
    """Stops the run when ``check()`` returns True (polled at most every ``every`` seconds)."""

    def __init__(self, check: Callable[[], bool], every: float = 0.5) -> None:
        self.check, self.every, self._last, self._stop = check, every, 0.0, False

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last >= self.every:
            self._last = now
            self._stop = bool(self.check())
        return self._stop


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit name is checked and used."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine. Use --device auto or cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine. Use --device auto or cpu.")
    return dev


def available_devices() -> dict[str, Any]:
    """What this machine can train on, for the UI: device choices and how many GPUs."""
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = bool(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    choices = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else []) + (["mps"] if mps else [])
    return {
        "choices": choices, "cuda_count": n_cuda, "mps": mps, "auto": str(resolve_device("auto")),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(n_cuda)],
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """A model ready to train: data scanned, weights loaded, freeze plan applied."""

    config: TrainConfig
    split: DatasetSplit
    model: nn.Module
    weights: WeightsInfo
    blocks: list[Block]
    plan: FreezePlan
    image_size: int
    load_size: int


def prepare(config: TrainConfig) -> Prepared:
    """Scan data, create the backbone with a fresh head and apply the freeze plan (no training)."""
    split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    seed_everything(config.seed)  # the new head's init depends on the seed only
    model, weights = create_backbone(config.model, len(split.classes), config.weights)
    image_size = int(config.image_size or weights.input_size)
    blocks = list_blocks(model, image_size)
    plan = parse_freeze(config.freeze, blocks, config.bn_mode)
    apply_freeze(model, blocks, plan)
    load_size = int(math.floor(image_size / weights.crop_pct))
    return Prepared(config, split, model, weights, blocks, plan, image_size, load_size)


# -- preprocessing on decoded uint8 tensors ------------------------------------------------
def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` of image tensors (``(..., H, W)``): a view, no copy."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _augment(x: torch.Tensor, size: int) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter on a uint8 batch (global RNG)."""
    from torchvision.transforms import v2

    tf = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3),
    ])
    return torch.stack([tf(img) for img in x])


class Normalizer:
    """uint8 images ``(N, 3, H, W)`` -> float ``(x / 255 - mean) / std``, per channel, on ``device``.

    Example:
        >>> Normalizer((0.5,) * 3, (0.5,) * 3)(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max()
        tensor(1.)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, x_u8: torch.Tensor) -> torch.Tensor:
        return (x_u8.float() - self.mean) / self.std


# -- the model split into a frozen prefix and a trainable suffix -----------------------------
class _Split:
    """Runs ``model`` as prefix(K frozen blocks) -> suffix, so the prefix can be cached or run without autograd."""

    def __init__(self, model: nn.Module, blocks: Sequence[Block], k: int) -> None:
        self.model, self.blocks, self.k = model, list(blocks), k
        self.body = [b for b in self.blocks if b.kind != "head"]
        self.head_only = k >= len(self.body)
        self.supported = self.head_only or all(b.stage is not None for b in self.body)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        for b in self.body[: self.k]:
            x = b.stage(x)
        return x

    def suffix(self, h: torch.Tensor) -> torch.Tensor:
        if self.head_only:
            return self.model.get_classifier()(h)
        for b in self.body[self.k:]:
            h = b.stage(h)
        return self.model.forward_head(h)


def _estimate_cache_bytes(split: _Split, sample: torch.Tensor, n_images: int) -> tuple[int, tuple[int, ...]]:
    with torch.inference_mode():
        out = split.prefix(sample[:1])
    return int(out[0].numel() * out.element_size() * n_images), tuple(out.shape[1:])


def _has_bn(model: nn.Module, blocks: Sequence[Block]) -> bool:
    mods = dict(model.named_modules())
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in blocks for name in b.modules if name in mods for m in mods[name].modules()
    )


def _late_blocks(config: TrainConfig, blocks: Sequence[Block], plan: FreezePlan) -> list[str]:
    """The blocks the unfreeze schedule will unfreeze: the last ``unfreeze_blocks`` frozen ones."""
    if config.unfreeze_at <= 0 or config.unfreeze_blocks <= 0:
        return []
    if config.unfreeze_at == 1:
        raise ValueError("--unfreeze-at 1 would unfreeze before any training; use 2 or later, or freeze less.")
    frozen_body = [b.name for b in blocks if b.name in plan.frozen]
    return frozen_body[-config.unfreeze_blocks:]


def _cache_decision(cfg: TrainConfig, prep: Prepared, split: _Split) -> tuple[bool, str]:
    if cfg.feature_cache == "off":
        return False, "the feature cache is turned off for this run"
    if split.k == 0:
        return False, "no frozen prefix to cache (the first block trains)"
    if cfg.augment:
        return False, "augmentation is on: the frozen blocks see a new crop every epoch, so their output cannot be cached"
    if prep.plan.bn_mode == "train" and _has_bn(prep.model, split.body[: split.k]):
        return False, "BatchNorm in the frozen blocks is set to train, so their output changes every batch"
    if not split.supported:
        return False, f"partial-depth caching is not supported for {cfg.model}; only head-only caching is"
    return True, ""


@torch.inference_mode()
def _run_prefix(split: _Split, images: torch.Tensor, norm: Normalizer, size: int, device: torch.device,
                batch: int = 64, fmt: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    outs = []
    for i in range(0, len(images), batch):
        x = fmt(norm(center_crop(images[i:i + batch], size).to(device)))
        outs.append(split.prefix(x))
    return fmt(torch.cat(outs))


def _bn_eps(model: nn.Module) -> float | None:
    """The BatchNorm eps in use (the bundled weights need 1e-3); stored so a checkpoint reloads exactly."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return float(m.eps)
    return None


def load_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[str], dict[str, Any]]:
    """Rebuild a run's model from its folder: ``(model in eval mode, class names, preprocessing meta)``."""
    import json

    import timm
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "preprocessing.json").read_text())
    classes = json.loads((run_dir / "labels.json").read_text())
    model = timm.create_model(meta["model"], pretrained=False, num_classes=len(classes), drop_rate=0.0)
    if meta.get("bn_eps"):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = meta["bn_eps"]
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.to(device).eval(), classes, meta


def save_checkpoint(model: nn.Module, out_dir: Path, classes: Sequence[str], meta: dict[str, Any],
                    name: str = "model.safetensors") -> Path:
    """Model as safetensors + labels.json + preprocessing.json, each written atomically."""
    from safetensors.torch import save as st_save

    from .runs import atomic_write_bytes, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / name, st_save(sd, metadata={"model": str(meta.get("model", ""))}))
    atomic_write_json(out_dir / "labels.json", list(classes))
    atomic_write_json(out_dir / "preprocessing.json", meta)
    return out_dir / name


def _emit(callbacks: Sequence[Callback], event: str, *args: Any) -> None:
    for cb in callbacks:
        getattr(cb, event)(*args)


class _Dist:
    """torchrun's environment: world size, rank, local rank; a process group when world > 1."""

    def __init__(self) -> None:
        import os

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.created = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        import torch.distributed as dist

        if self.active and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.created = True

    def sum(self, *values: float) -> list[float]:
        """Sum numbers across ranks (identity in one process)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(float(flag))[0] > 0 if self.active else flag

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def shard_indices(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's training indices for an epoch: a seeded shuffle, split like ``DistributedSampler``.

    With ``world == 1`` this is the whole shuffled epoch. Shards are disjoint except for the few
    indices repeated to make every shard the same length (as DistributedSampler pads).
    """
    if world == 1:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


class _Step(nn.Module):
    """What trains, as one module (so DistributedDataParallel can wrap it): cached features or
    images in, logits out."""

    def __init__(self, model: nn.Module, split: _Split, use_cache: bool) -> None:
        super().__init__()
        self.model, self.split, self.use_cache = model, split, use_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_cache:
            return self.split.suffix(x)
        if self.split.supported and self.split.k > 0:
            with torch.no_grad():  # the fast frozen path: no autograd through frozen blocks
                x = self.split.prefix(x)
            return self.split.suffix(x)
        return self.model(x)


def _amp(device: torch.device) -> tuple[Any, torch.dtype | None, Any]:
    """Autocast context factory, dtype and grad scaler: bf16 where supported, else fp16 + scaler (CUDA only)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext, None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype, scaler


def train(config: TrainConfig, callbacks: Sequence[Callback] = (), out_dir: str | Path | None = None) -> TrainResult:
    """Train one run; see the module docstring.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every epoch (DistributedSampler)
    with ``batch_size / world`` images per step, metrics are summed across ranks, and only rank 0
    emits events and writes checkpoints.

    Args:
        config: the run's settings.
        callbacks: receive the events in :data:`EVENTS`; any ``should_stop()`` ends the run.
        out_dir: where to write the checkpoint (``model.safetensors``, ``labels.json``,
            ``preprocessing.json``) after each epoch; None writes nothing.

    Returns:
        The :class:`TrainResult` (status ``finished`` or ``stopped``).

    Raises:
        data.DataError, backbones.BackboneError, layers.LayersError: bad input, one clear line.
    """
    t_start = time.perf_counter()
    dist_ = _Dist()
    cbs = list(callbacks) if dist_.main else []
    log = lambda level, msg: _emit(cbs, "on_log", level, msg)  # noqa: E731
    device = resolve_device(config.device)
    if dist_.active and device.type == "cuda":
        device = torch.device("cuda", dist_.local_rank)
        torch.cuda.set_device(device)
    dist_.setup(device)
    try:
        return _train(config, cbs, out_dir, device, dist_, log, t_start)
    finally:
        dist_.close()


def _train(config: TrainConfig, cbs: list[Callback], out_dir: str | Path | None, device: torch.device,
           dist_: _Dist, log: Callable[[str, str], None], t_start: float) -> TrainResult:
    prep = prepare(config)
    model, blocks, plan, split_data = prep.model, prep.blocks, prep.plan, prep.split
    size = prep.image_size
    cuda = device.type == "cuda"
    model.to(device)
    # channels_last: measured 2.5x faster for CNN training steps on this project's 2-core CPU
    # (benchmarks/bench_train.py); ViTs have no 4-D activations to reorder.
    nhwc = any(isinstance(m, nn.Conv2d) for m in model.modules()) and not hasattr(model, "patch_embed")
    if nhwc:
        model.to(memory_format=torch.channels_last)

    def fmt(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if nhwc and t.dim() == 4 else t
    norm = Normalizer(prep.weights.mean, prep.weights.std, device)
    autocast, amp_dtype, scaler = _amp(device)

    cache = DecodedImageCache(prep.load_size, interpolation=prep.weights.interpolation)
    x_train, y_train = cache.stack(split_data.train)
    x_val, y_val = cache.stack(split_data.val)
    if cuda:  # pinned host memory: non-blocking copies overlap with compute
        x_train, x_val = x_train.pin_memory(), x_val.pin_memory()

    late = _late_blocks(config, blocks, plan)
    k = 0  # the prefix that stays frozen for the whole run is what can be cached
    for b in blocks:
        if b.name not in plan.frozen or b.name in late:
            break
        k += 1
    split = _Split(model, blocks, k)
    use_cache, reason = _cache_decision(config, prep, split)
    cache_info: dict[str, Any] = {"used": False, "frozen_prefix_blocks": k, "reason": reason}
    if use_cache:
        model.eval()
        n_bytes, shape = _estimate_cache_bytes(split, norm(center_crop(x_train[:1], size).to(device)), len(x_train) + len(x_val))
        cache_info.update(estimated_mb=round(n_bytes / 2**20, 1), feature_shape=list(shape))
        if n_bytes > config.cache_max_mb * 2**20:
            use_cache = False
            cache_info["reason"] = (f"the feature cache would need {n_bytes / 2**20:.0f} MB, above the "
                                    f"{config.cache_max_mb} MB bound; training runs the full path")
    if use_cache:
        t0 = time.perf_counter()
        f_train = _run_prefix(split, x_train, norm, size, device, fmt=fmt)
        f_val = _run_prefix(split, x_val, norm, size, device, fmt=fmt)
        where = "CPU memory"
        if cuda:
            free, _ = torch.cuda.mem_get_info(device)
            if n_bytes > free // 2:  # keep the GPU for training; cached tensors wait in pinned host memory
                f_train, f_val = f_train.cpu().pin_memory(), f_val.cpu().pin_memory()
            else:
                where = "GPU memory"
        cache_info.update(used=True, reason="", build_seconds=round(time.perf_counter() - t0, 3), location=where)
        log("info", f"Feature cache: {k} frozen blocks computed once for {len(f_train) + len(f_val)} images "
                    f"({cache_info['estimated_mb']} MB in {where}, {cache_info['build_seconds']} s); "
                    "training the rest on cached tensors.")
    else:
        log("info", f"Full path: {cache_info['reason']}.")
    y_train_d, y_val_d = y_train.to(device), y_val.to(device)

    step_module: nn.Module = _Step(model, split, use_cache)
    if dist_.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(step_module, device_ids=[device.index] if cuda else None)
    groups: list[dict[str, Any]] = [{"params": trainable_parameters(model), "lr": config.lr}]
    late_names = {n for b in blocks if b.name in late for n in b.param_names(model)}
    late_params = [p for n, p in model.named_parameters() if n in late_names]
    if late_params:  # frozen (no grads, untouched) until the unfreeze epoch, then at a lower learning rate
        groups.append({"params": late_params, "lr": config.lr * config.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    per_rank_batch = max(1, config.batch_size // dist_.world)
    shard_len = len(shard_indices(len(x_train), 0, config.seed, dist_.rank, dist_.world))
    steps_per_epoch = max(1, math.ceil(shard_len / per_rank_batch))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    )
    trainable, frozen = count_params(model, True), count_params(model, False)
    meta = {
        "model": config.model, "image_size": size, "load_size": prep.load_size,
        "mean": list(prep.weights.mean), "std": list(prep.weights.std),
        "interpolation": prep.weights.interpolation, "crop_pct": prep.weights.crop_pct,
        "num_classes": len(split_data.classes),
        "bn_eps": _bn_eps(model), "weights_source": prep.weights.source,
        "freeze": plan.spec, "frozen_blocks": plan.frozen, "bn_mode": plan.bn_mode,
    }
    device_text = str(device) + (f" × {dist_.world} processes" if dist_.active else "") + (
        f", autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "")
    _emit(cbs, "on_run_start", {
        "classes": split_data.classes, "train_images": len(x_train), "val_images": len(x_val),
        "data_fingerprint": split_data.fingerprint(),
        "steps_per_epoch": steps_per_epoch, "epochs": config.epochs, "trainable_params": trainable,
        "frozen_params": frozen, "weights": prep.weights.to_dict(), "feature_cache": cache_info,
        "device": device_text, "world_size": dist_.world, "freeze_label": plan.label, "image_size": size,
        "unfreeze": {"epoch": config.unfreeze_at, "blocks": late, "lr_scale": config.backbone_lr_scale} if late else None,
        "skipped_files": [s.to_dict() for s in split_data.skipped],
        "blocks": [{"name": b.name, "params": b.params, "frozen": b.name in plan.frozen} for b in blocks],
    })

    def inputs(idx: torch.Tensor) -> torch.Tensor:
        if use_cache:
            return f_train[idx].to(device, non_blocking=True)
        xb = x_train[idx]
        xb = _augment(xb, size) if config.augment else center_crop(xb, size)
        xb = norm(xb.to(device, non_blocking=True))
        return fmt(xb)

    val_idx = torch.arange(dist_.rank, len(x_val), dist_.world)  # each rank scores a slice; sums are reduced

    @torch.inference_mode()
    def evaluate() -> tuple[float, float]:
        model.eval()
        loss_sum, correct = 0.0, 0
        for i in range(0, len(val_idx), 64):
            idx = val_idx[i:i + 64]
            with autocast():
                if use_cache:
                    logits = split.suffix(f_val[idx].to(device))
                else:
                    logits = model(fmt(norm(center_crop(x_val[idx], size).to(device))))
            yb = y_val_d[idx.to(device)]
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
        loss_sum, correct, n = dist_.sum(loss_sum, correct, len(val_idx))
        return loss_sum / max(1, n), correct / max(1, n)

    history: list[dict[str, Any]] = []
    status, step, best = "finished", 0, 0.0
    try:
        for epoch in range(1, config.epochs + 1):
            if late and epoch == config.unfreeze_at:
                for p in late_params:
                    p.requires_grad_(True)
                plan.frozen = [n for n in plan.frozen if n not in late]
                if dist_.active:  # DDP fixes its parameter set when built: build it again
                    from torch.nn.parallel import DistributedDataParallel as DDP

                    step_module = DDP(_Step(model, split, use_cache), device_ids=[device.index] if cuda else None)
                log("info", f"Epoch {epoch}: unfroze {', '.join(late)} at lr x {config.backbone_lr_scale:g} "
                            f"({count_params(model, True):,} trainable parameters now).")
            _emit(cbs, "on_epoch_start", epoch)
            model.train()
            set_bn_mode(model, blocks, plan)
            t_epoch = time.perf_counter()
            order = shard_indices(len(x_train), epoch, config.seed, dist_.rank, dist_.world)
            loss_sum, correct, seen = 0.0, 0, 0
            for bi in range(steps_per_epoch):
                if dist_.any(any(cb.should_stop() for cb in cbs)):
                    raise TrainingStopped()
                idx = order[bi * per_rank_batch:(bi + 1) * per_rank_batch]
                yb = y_train_d[idx.to(device)]
                with autocast():
                    logits = step_module(inputs(idx))
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                step += 1
                b_loss, b_correct, b_n = dist_.sum(loss.item() * len(idx), (logits.argmax(1) == yb).sum().item(), len(idx))
                loss_sum, correct, seen = loss_sum + b_loss, correct + b_correct, seen + b_n
                _emit(cbs, "on_step_end", {
                    "step": step, "epoch": epoch - 1 + (bi + 1) / steps_per_epoch, "loss": b_loss / max(1, b_n),
                    "lr": optimizer.param_groups[0]["lr"], "images": seen, "total_steps": total_steps,
                    "elapsed": time.perf_counter() - t_start,
                })
            t_train = time.perf_counter() - t_epoch
            val_loss, val_acc = evaluate()
            seconds = time.perf_counter() - t_epoch
            best = max(best, val_acc)
            row = {
                "epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                "images_per_sec": seen / max(t_train, 1e-9), "seconds": seconds,
            }
            history.append(row)
            if out_dir is not None and dist_.main:
                save_checkpoint(model, Path(out_dir), split_data.classes, {**meta, "epoch": epoch})
            _emit(cbs, "on_epoch_end", row)
    except TrainingStopped:
        status = "stopped"
        log("info", f"Stopped on request after {len(history)} of {config.epochs} epochs.")
        if out_dir is not None and dist_.main:
            save_checkpoint(model, Path(out_dir), split_data.classes, {**meta, "epoch": len(history)})

    result = TrainResult(
        status=status,
        val_accuracy=history[-1]["val_acc"] if history else 0.0,
        best_val_accuracy=best,
        train_seconds=round(time.perf_counter() - t_start, 3),
        epochs=len(history),
        trainable_params=trainable,
        frozen_params=frozen,
        weights=prep.weights.to_dict(),
        skipped_files=[s.to_dict() for s in split_data.skipped],
        classes=split_data.classes,
        feature_cache=cache_info,
        freeze_label=plan.label,
        device=device_text,
        history=history,
    )
    _emit(cbs, "on_run_end", result)
    return result
