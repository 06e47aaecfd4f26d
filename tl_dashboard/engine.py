"""Training a run, as named phases; its events and callbacks.

``train(config, callbacks)`` scans the data, builds the backbone, applies the freeze plan and
trains with AdamW and a cosine schedule, one phase at a time:

1. :func:`prepare` - scan the folder (or take a scanned split), create the model, apply the freeze plan;
2. :func:`load_data` - decode every image once, on every core, into the on-disk image cache
   (``imagestore``; later runs reuse it), read back batch by batch;
3. :func:`featurecache.build_feature_cache` - when the first K blocks stay frozen all run
   (BatchNorm on running statistics) and augmentation is off, their output is computed once per
   image and only the rest trains, on the cached tensors; otherwise the frozen prefix still runs
   without autograd;
4. :func:`loop.make_optimizer` - AdamW + per-step cosine schedule (the unfreeze schedule,
   :class:`unfreeze.UnfreezeSchedule`, adds its group);
5. per epoch: the unfreeze schedule's ``finetune_function``, :func:`loop.run_epoch`,
   :func:`loop.evaluate`, :func:`save_epoch`.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import auto_head
from .backbones import WeightsInfo, create_backbone
from .checkpoint import bn_eps, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .configcheck import allowed_image_sizes, check_config
from .cost import Clock, gflops_per_epoch
from .data import DatasetSplit, scan_images
from .devices import available_devices, resolve_device
from .featstore import prefix_key
from .featurecache import FrozenSplit, build_feature_cache
from .imagestore import RowView, open_images
from .layers import Block, FreezePlan, apply_freeze, count_params, list_blocks, parse_freeze
from .loop import Dist, Loop, Step, TrainingStopped, amp, emit, evaluate, make_optimizer, run_epoch, shard_indices
from .preprocess import Normalizer, center_crop
from .resume import RunProgress, apply_resume_state, load_resume_state, save_resume_state
from .stats import limit_per_class
from .unfreeze import UnfreezeSchedule

__all__ = [
    "EVENTS",
    "TrainConfig",
    "TrainResult",
    "Callback",
    "StopCheck",
    "TrainingStopped",
    "ConfigError",
    "train",
    "resolve_device",
    "Prepared",
    "prepare",
    "start_model",
    "check_config",
    "allowed_image_sizes",
    "load_data",
    "save_epoch",
    "save_checkpoint",
    "load_checkpoint",
    "shard_indices",
    "available_devices",
    "center_crop",
    "Normalizer",
]

EVENTS = ("on_run_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_run_end", "on_log")


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped"
    val_accuracy: float | None  # None: stopped before the first epoch completed (no model kept)
    best_val_accuracy: float | None
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
    auto: dict[str, Any] = field(default_factory=dict)  # what "auto" lr/epochs chose (auto_head.resolve)
    last_val_accuracy: float | None = None  # the last completed epoch's (val_accuracy is the kept, best epoch's)
    best_epoch: int | None = None  # the epoch whose weights are the checkpoint (None: no epoch completed, no checkpoint)
    early_stopped: bool = False
    resumed_from_epoch: int = 0
    wall_seconds: float = 0.0  # all sessions of the run
    cpu_seconds: float = 0.0  # this process's CPU time (all threads), all sessions
    load_avg: dict[str, Any] | None = None  # 1-minute load average at start/end and the core count
    shared_machine: bool = False
    gflops_per_epoch: float | None = None  # forward + backward of the training step, counted once

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def start_model(config: TrainConfig, num_classes: int) -> tuple[nn.Module, WeightsInfo, list[Block], FreezePlan, int]:
    """The model a run starts from, without touching the data: ``(model, weights, blocks, plan, image_size)``.

    Same config and class count -> the same starting weights (the new head's init depends on the seed only).
    """
    seed_everything(config.seed)
    model, weights = create_backbone(config.model, num_classes, config.weights)
    image_size = int(config.image_size or weights.input_size)
    blocks = list_blocks(model, image_size)
    plan = parse_freeze(config.freeze, blocks, config.bn_mode)
    apply_freeze(model, blocks, plan)
    return model, weights, blocks, plan, image_size


def prepare(config: TrainConfig, split: DatasetSplit | None = None) -> Prepared:
    """Phase: scan data (unless ``split`` is given), create the backbone with a fresh head and apply the freeze plan."""
    if split is None:
        split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    if getattr(config, "train_per_class", 0):
        split = limit_per_class(split, config.train_per_class, config.seed)
    model, weights, blocks, plan, image_size = start_model(config, len(split.classes))
    load_size = int(math.floor(image_size / weights.crop_pct))
    return Prepared(config, split, model, weights, blocks, plan, image_size, load_size)


def load_data(prep: Prepared, device: torch.device) -> tuple[RowView, torch.Tensor, RowView, torch.Tensor]:
    """Phase: every image decoded and resized once, on every core, into the on-disk cache
    (:mod:`.imagestore`; reused by later runs) -> ``(x_train, y_train, x_val, y_val)``.

    ``x_*`` are :class:`~tl_dashboard.imagestore.RowView`: indexed like uint8 tensors, they read
    only the rows asked for (pinned memory on CUDA), so memory does not grow with the data set."""
    store, digests = open_images(prep.split, prep.load_size, prep.weights.interpolation, image_size=prep.image_size)
    pin = device.type == "cuda"  # pinned host memory: non-blocking copies overlap with compute
    views = []
    for samples in (prep.split.train, prep.split.val):
        view = RowView(store.read, store.rows(samples, digests), pin=pin)
        view.source = store
        views.append((view, torch.tensor([int(s.label) for s in samples], dtype=torch.int64).to(device)))
    (x_train, y_train), (x_val, y_val) = views
    return x_train, y_train, x_val, y_val


def _place_model(model: nn.Module, device: torch.device) -> bool:
    """Move the model to ``device``; channels_last for CNNs (True): measured 2.5x faster for CNN
    training steps on this project's 2-core CPU (benchmarks/bench_train.py); ViTs have no 4-D
    activations to reorder."""
    model.to(device)
    nhwc = any(isinstance(m, nn.Conv2d) for m in model.modules()) and not hasattr(model, "patch_embed")
    if nhwc:
        model.to(memory_format=torch.channels_last)
    return nhwc


def build_loop(
    config: TrainConfig, prep: Prepared, device: torch.device, dist: Dist, t_start: float, log: Callable[[str, str], None]
) -> Loop:
    """Phases 2-4: data tensors, the feature cache, the optimizer and schedule, bundled as a :class:`loop.Loop`."""
    nhwc = _place_model(prep.model, device)
    x_train, y_train, x_val, y_val = load_data(prep, device)
    schedule = UnfreezeSchedule.from_config(config, prep.blocks, prep.plan)
    split = FrozenSplit(prep.model, prep.blocks, schedule.frozen_all_run())
    norm = Normalizer(prep.weights.mean, prep.weights.std, device)
    fmt = lambda t: t.contiguous(memory_format=torch.channels_last) if nhwc and t.dim() == 4 else t  # noqa: E731
    key = prefix_key(prep, "head" if split.head_only else split.k, nhwc)
    cache = build_feature_cache(config, prep.model, prep.plan, split, x_train, x_val, norm, prep.image_size, device, fmt, key_parts=key)
    if cache.used:
        i = cache.info
        log(
            "info",
            f"Feature cache: {split.k} frozen blocks computed once for {len(x_train) + len(x_val)} images "
            f"({i['estimated_mb']} MB in {i['location']}, {i['build_seconds']} s); "
            "training the rest on cached tensors.",
        )
    else:
        log("info", f"Full path: {cache.info['reason']}.")
    per_rank_batch = max(1, config.batch_size // dist.world)
    shard_len = len(shard_indices(len(x_train), 0, config.seed, dist.rank, dist.world))
    steps_per_epoch = max(1, math.ceil(shard_len / per_rank_batch))
    loop = Loop(
        prep.model,
        prep.blocks,
        schedule,
        split,
        cache,
        x_train,
        y_train,
        x_val,
        y_val,
        norm,
        prep.image_size,
        device,
        dist,
        nhwc,
        config.augment,
        config.seed,
        config.label_smoothing,
        per_rank_batch,
        steps_per_epoch,
        steps_per_epoch * config.epochs,
        t_start,
    )
    loop.optimizer, loop.scheduler = make_optimizer(
        prep.model, schedule, lr=config.lr, weight_decay=config.weight_decay, total_steps=loop.total_steps
    )
    loop.autocast, _, loop.scaler = amp(device)
    loop.wrap()
    return loop


def _checkpoint_meta(config: TrainConfig, prep: Prepared) -> dict[str, Any]:
    w = prep.weights
    return {
        "model": config.model,
        "image_size": prep.image_size,
        "load_size": prep.load_size,
        "mean": list(w.mean),
        "std": list(w.std),
        "interpolation": w.interpolation,
        "crop_pct": w.crop_pct,
        "num_classes": len(prep.split.classes),
        "bn_eps": bn_eps(prep.model),
        "weights_source": w.source,
        "freeze": prep.plan.spec,
        "frozen_blocks": list(prep.plan.frozen),
        "bn_mode": prep.plan.bn_mode,
    }


def _device_text(device: torch.device, dist: Dist) -> str:
    amp_dtype = amp(device)[1]
    return (
        str(device)
        + (f" × {dist.world} processes" if dist.active else "")
        + (f", autocast {str(amp_dtype).replace('torch.', '')}" if amp_dtype else "")
    )


def _run_start_info(config: TrainConfig, prep: Prepared, loop: Loop, device_text: str) -> dict[str, Any]:
    return {
        "classes": prep.split.classes,
        "train_images": len(loop.x_train),
        "val_images": len(loop.x_val),
        "data_fingerprint": prep.split.fingerprint(),
        "steps_per_epoch": loop.steps_per_epoch,
        "epochs": config.epochs,
        "trainable_params": count_params(prep.model, True),
        "frozen_params": count_params(prep.model, False),
        "weights": prep.weights.to_dict(),
        "feature_cache": loop.cache.info,
        "device": device_text,
        "world_size": loop.dist.world,
        "freeze_label": prep.plan.label,
        "image_size": prep.image_size,
        "unfreeze": loop.schedule.info(),
        "skipped_files": [s.to_dict() for s in prep.split.skipped],
        "blocks": [{"name": b.name, "params": b.params, "frozen": b.name in prep.plan.frozen} for b in prep.blocks],
    }


def save_epoch(loop: Loop, out_dir: str | Path | None, classes: Sequence[str], meta: dict[str, Any], epoch: int) -> None:
    """Phase: the checkpoint of the best epoch so far, ``epoch`` (rank 0 only; nothing without ``out_dir``)."""
    if out_dir is not None and loop.dist.main:
        save_checkpoint(loop.model, Path(out_dir), classes, {**meta, "epoch": epoch, "best_epoch": epoch})


def _unfreeze(loop: Loop, epoch: int, log: Callable[[str, str], None]) -> None:
    if loop.schedule.finetune_function(loop.model, epoch, loop.optimizer):
        if loop.dist.active:
            loop.wrap()
        log(
            "info",
            f"Epoch {epoch}: unfroze {', '.join(loop.schedule.blocks)} at lr x {loop.schedule.lr_scale:g} "
            f"({count_params(loop.model, True):,} trainable parameters now).",
        )


def _epoch_row(loop: Loop, epoch: int, cbs: Sequence[Callback]) -> dict[str, Any]:
    t_epoch = time.perf_counter()
    train_row = run_epoch(loop, epoch, cbs)
    val_loss, val_acc = evaluate(loop)
    return {
        "epoch": epoch,
        "train_loss": train_row["train_loss"],
        "train_acc": train_row["train_acc"],
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": loop.optimizer.param_groups[0]["lr"],
        "images_per_sec": train_row["images_per_sec"],
        "seconds": time.perf_counter() - t_epoch,
    }


def fit(
    loop: Loop,
    epochs: int,
    cbs: Sequence[Callback],
    progress: RunProgress,
    *,
    patience: int,
    save_best: Callable[[int], None],
    save_state: Callable[[int], None],
    log: Callable[[str, str], None],
    start_epoch: int = 1,
) -> str:
    """Phase 5: epochs ``start_epoch``..``epochs``, each unfreeze -> train -> evaluate -> keep the best ->
    resume point; early stopping after ``patience`` epochs without a new lowest validation loss.
    Returns the status (``finished`` or ``stopped``); ``progress`` holds the history and the best epoch."""
    try:
        for epoch in range(start_epoch, epochs + 1):
            _unfreeze(loop, epoch, log)
            emit(cbs, "on_epoch_start", epoch)
            row = _epoch_row(loop, epoch, cbs)
            if progress.record(row, patience):
                save_best(epoch)
            emit(cbs, "on_epoch_end", row)
            save_state(epoch)
            if progress.early_stopped and epoch < epochs:
                log(
                    "info",
                    f"Early stop after epoch {epoch}: validation loss has not improved for {patience} epochs "
                    f"(best {progress.min_loss:.4f}); keeping epoch {progress.best_epoch}.",
                )
                break
        else:
            progress.early_stopped = False  # the planned epochs all ran
    except TrainingStopped:
        log(
            "info",
            f"Stopped on request after {len(progress.history)} of {epochs} epochs"
            + (
                f"; keeping epoch {progress.best_epoch}."
                if progress.history
                else ": no epoch completed, so no model is kept (nothing to evaluate or resume; start it again)."
            ),
        )
        return "stopped"
    return "finished"


def train(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    out_dir: str | Path | None = None,
    split: DatasetSplit | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one run; see the module docstring.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every epoch (DistributedSampler)
    with ``batch_size / world`` images per step, metrics are summed across ranks, and only rank 0
    emits events and writes checkpoints.

    Args:
        config: the run's settings.
        callbacks: receive the events in :data:`EVENTS`; any ``should_stop()`` ends the run.
        out_dir: where to write the best epoch's checkpoint (``model.safetensors``, ``labels.json``,
            ``preprocessing.json``) and, after every epoch, the resume point (``resume.pt``); None writes nothing.
        split: the data folder already scanned with ``config``'s fraction and seed (else scanned here).
        resume: continue from ``out_dir``'s resume point (model, optimizer, schedule, RNG, history).

    Returns:
        The :class:`TrainResult` (status ``finished`` or ``stopped``); its ``val_accuracy`` is the
        kept (best) epoch's.

    Raises:
        errors.UserError (data.DataError, backbones.BackboneError, layers.LayersError, ...): bad input, one clear line.
    """
    t_start = time.perf_counter()
    dist = Dist()
    cbs = list(callbacks) if dist.main else []
    log = lambda level, msg: emit(cbs, "on_log", level, msg)  # noqa: E731
    device = resolve_device(config.device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    dist.setup(device)
    try:
        return _train(config, cbs, out_dir, device, dist, log, t_start, split, resume)
    finally:
        dist.close()


def _cost(loop: Loop) -> float | None:
    """GFLOPs per epoch of this run's training step, counted once on one batch (no RNG used)."""
    idx = torch.arange(min(loop.per_rank_batch, len(loop.x_train)))
    if loop.cache.used:
        x = loop.cache.train[idx].to(loop.device)
    else:
        x = loop.fmt(loop.norm(center_crop(loop.x_train[idx], loop.image_size).to(loop.device)))
    step = Step(loop.model, loop.split, loop.cache.used)
    return gflops_per_epoch(step, x, loop.y_train[idx.to(loop.device)], len(loop.x_train), loop.model.parameters)


def _resume(loop: Loop, out_dir: str | Path | None, log: Callable[[str, str], None]) -> tuple[RunProgress, int]:
    """The progress to continue from and the first epoch to train (a fresh run: empty, 1)."""
    state = load_resume_state(out_dir) if out_dir is not None else None
    if state is None:
        return RunProgress(), 1
    progress = apply_resume_state(state, loop.model, loop.optimizer, loop.scheduler)
    loop.step = int(state["step"])
    log("info", f"Resumed after epoch {state['epoch']} (step {loop.step}) with the optimizer and schedule state.")
    return progress, int(state["epoch"]) + 1


def _result(
    status: str, progress: RunProgress, loop: Loop, info: dict[str, Any], clock: Clock, start_epoch: int, auto: dict[str, Any]
) -> TrainResult:
    h = progress.history
    best = next((r for r in h if r["epoch"] == progress.best_epoch), None)
    kept_acc = best["val_acc"] if best else None  # no completed epoch: no score (a mid-epoch model is not a result)
    return TrainResult(
        status=status,
        val_accuracy=kept_acc,
        best_val_accuracy=kept_acc,
        train_seconds=round(clock.wall(), 3),
        epochs=len(h),
        trainable_params=info["trainable_params"],
        frozen_params=info["frozen_params"],
        weights=info["weights"],
        skipped_files=info["skipped_files"],
        classes=info["classes"],
        feature_cache=loop.cache.info,
        freeze_label=info["freeze_label"],
        device=info["device"],
        history=h,
        last_val_accuracy=h[-1]["val_acc"] if h else None,
        best_epoch=progress.best_epoch if best else None,
        early_stopped=progress.early_stopped,
        resumed_from_epoch=start_epoch - 1,
        gflops_per_epoch=info.get("gflops_per_epoch"),
        auto=auto,
        **clock.stop(),
    )


def _train(
    config: TrainConfig,
    cbs: list[Callback],
    out_dir: str | Path | None,
    device: torch.device,
    dist: Dist,
    log: Callable[[str, str], None],
    t_start: float,
    split: DatasetSplit | None,
    resume: bool,
) -> TrainResult:
    if split is None:
        split = scan_images(config.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    check_config(config, None, check_freeze=False)  # the batch-vs-data check is for submissions (CLI, UI)
    prep = prepare(config, split)
    config, auto = auto_head.resolve(config, prep.plan, prep.blocks, dist.world)
    loop = build_loop(config, prep, device, dist, t_start, log)
    auto["solver"] = auto["solver"] and loop.cache.used and isinstance(prep.model.get_classifier(), nn.Linear)
    auto.update(
        lr_used=None if auto["solver"] else config.lr,  # what auto resolved to, for the pages
        epochs_planned=auto["max_iter"] if auto["solver"] else config.epochs,
    )
    progress, start_epoch = _resume(loop, out_dir, log) if resume and not auto["solver"] else (RunProgress(), 1)
    clock = Clock(progress.wall_seconds, progress.cpu_seconds)
    info = _run_start_info(config, prep, loop, _device_text(device, dist))
    info.update(gflops_per_epoch=_cost(loop) if dist.main else None, resumed_from_epoch=start_epoch - 1)
    if auto["solver"]:  # one epoch per solver iteration, at most max_iter
        info.update(epochs=auto["max_iter"], steps_per_epoch=1)
    emit(cbs, "on_run_start", info)
    if auto["note"]:
        log("info", auto["note"][0].upper() + auto["note"][1:] + ".")
    meta = _checkpoint_meta(config, prep)
    save_best = lambda e: save_epoch(loop, out_dir, prep.split.classes, meta, e)  # noqa: E731

    def save_state(epoch: int) -> None:
        if out_dir is not None and dist.main:
            done = replace(progress, wall_seconds=clock.wall(), cpu_seconds=clock.cpu())
            save_resume_state(out_dir, epoch, loop.step, loop.model, loop.optimizer, loop.scheduler, done)

    if auto["solver"]:  # the solver keeps its solution: the last iterate is the kept model
        history, status, auto["chosen"] = auto_head.train_cached_head(
            prep.model.get_classifier(),
            loop.cache.train,
            loop.y_train,
            loop.cache.val,
            loop.y_val,
            cbs,
            seed=config.seed,
            t_start=t_start,
            max_iter=auto["max_iter"],
            log=log,
        )
        if history:
            save_best(len(history))
        progress.history, progress.best_epoch = history, (history[-1]["epoch"] if history else 0)
    else:
        status = fit(
            loop,
            config.epochs,
            cbs,
            progress,
            patience=config.patience,
            log=log,
            start_epoch=start_epoch,
            save_best=save_best,
            save_state=save_state,
        )
    result = _result(status, progress, loop, info, clock, start_epoch, auto)
    emit(cbs, "on_run_end", result)
    return result
