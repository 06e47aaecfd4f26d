"""One epoch, one evaluation, the optimizer and its schedule: the phases :func:`engine.train` runs.

:class:`Loop` holds what every epoch needs (model, inputs, optimizer, devices); :func:`run_epoch`
trains one epoch over it and :func:`evaluate` scores the validation split. :func:`make_optimizer`
is the optimizer-and-schedule phase: AdamW over the trainable parameters (plus the unfreeze
schedule's group) with a per-step cosine decay to 1% of the learning rate; call it with another
``lr`` or ``epochs`` to choose them elsewhere. :class:`Dist` wraps torchrun's environment.

Example:
    >>> optimizer, scheduler = make_optimizer(model, schedule, lr=1e-3, weight_decay=0.01, total_steps=100)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .featurecache import FeatureCache, FrozenSplit
from .layers import Block, set_bn_mode, trainable_parameters
from .preprocess import Normalizer, augment, center_crop
from .unfreeze import UnfreezeSchedule

__all__ = ["Dist", "Loop", "TrainingStopped", "make_optimizer", "run_epoch", "evaluate", "shard_indices", "amp", "emit"]


class TrainingStopped(Exception):
    """Raised inside the loop when a callback asks to stop; the run ends as 'stopped'."""


def emit(callbacks: Sequence[Any], event: str, *args: Any) -> None:
    for cb in callbacks:
        getattr(cb, event)(*args)


class Dist:
    """torchrun's environment: world size, rank, local rank; a process group when world > 1."""

    def __init__(self) -> None:
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


def amp(device: torch.device) -> tuple[Any, torch.dtype | None, Any]:
    """Autocast context factory, dtype and grad scaler: bf16 where supported, else fp16 + scaler (CUDA only)."""
    if device.type != "cuda":
        return contextlib.nullcontext, None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype, scaler


class Step(nn.Module):
    """What trains, as one module (so DistributedDataParallel can wrap it): cached features or
    images in, logits out."""

    def __init__(self, model: nn.Module, split: FrozenSplit, use_cache: bool) -> None:
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


def make_optimizer(
    model: nn.Module, schedule: UnfreezeSchedule, *, lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Phase: AdamW on the trainable parameters (+ the blocks the schedule unfreezes later, at
    ``lr x lr_scale``) and a per-step cosine decay from ``lr`` to 1% of it over ``total_steps``."""
    groups: list[dict[str, Any]] = [{"params": trainable_parameters(model), "lr": lr}]
    late = schedule.param_group(model, lr)
    if late is not None:
        groups.append(late)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    )
    return optimizer, scheduler


@dataclass
class Loop:
    """Everything one epoch needs, built once by ``engine.train``."""

    model: nn.Module
    blocks: list[Block]
    schedule: UnfreezeSchedule
    split: FrozenSplit
    cache: FeatureCache
    x_train: torch.Tensor  # uint8 images (CPU, pinned on CUDA)
    y_train: torch.Tensor  # labels on the device
    x_val: torch.Tensor
    y_val: torch.Tensor
    norm: Normalizer
    image_size: int
    device: torch.device
    dist: Dist
    nhwc: bool
    augment: bool
    seed: int
    label_smoothing: float
    per_rank_batch: int
    steps_per_epoch: int
    total_steps: int
    t_start: float
    optimizer: Any = None
    scheduler: Any = None
    step_module: nn.Module | None = None
    autocast: Callable[[], Any] = contextlib.nullcontext
    scaler: Any = None
    step: int = 0

    def fmt(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self.nhwc and t.dim() == 4 else t

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The training batch ``idx`` as the step module takes it: cached features or normalised images."""
        if self.cache.used:
            return self.cache.train[idx].to(self.device, non_blocking=True)
        xb = self.x_train[idx]
        xb = augment(xb, self.image_size) if self.augment else center_crop(xb, self.image_size)
        return self.fmt(self.norm(xb.to(self.device, non_blocking=True)))

    def val_logits(self, idx: torch.Tensor) -> torch.Tensor:
        if self.cache.used:
            return self.split.suffix(self.cache.val[idx].to(self.device))
        return self.model(self.fmt(self.norm(center_crop(self.x_val[idx], self.image_size).to(self.device))))

    def wrap(self) -> None:
        """(Re)build the step module; DDP fixes its parameter set when built, so it is rebuilt on unfreeze."""
        self.step_module = Step(self.model, self.split, self.cache.used)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            cuda = self.device.type == "cuda"
            self.step_module = DDP(self.step_module, device_ids=[self.device.index] if cuda else None)


def _optimizer_step(loop: Loop, loss: torch.Tensor) -> None:
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.scaler is not None:
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
    else:
        loss.backward()
        loop.optimizer.step()
    loop.scheduler.step()
    loop.step += 1


def run_epoch(loop: Loop, epoch: int, callbacks: Sequence[Any]) -> dict[str, Any]:
    """Phase: train one epoch (1-based); returns train loss/accuracy, images/s and the seconds it took.

    Raises:
        TrainingStopped: a callback's ``should_stop()`` was true between batches.
    """
    loop.model.train()
    set_bn_mode(loop.model, loop.blocks, loop.schedule.plan_at(epoch))
    t_epoch = time.perf_counter()
    order = shard_indices(len(loop.x_train), epoch, loop.seed, loop.dist.rank, loop.dist.world)
    if not loop.cache.used and hasattr(loop.x_train, "plan"):  # images from disk: read the epoch's batches ahead
        b = loop.per_rank_batch
        loop.x_train.plan([order[i * b : (i + 1) * b] for i in range(loop.steps_per_epoch)])
    loss_sum, correct, seen = 0.0, 0, 0
    for bi in range(loop.steps_per_epoch):
        if loop.dist.any(any(cb.should_stop() for cb in callbacks)):
            raise TrainingStopped()
        idx = order[bi * loop.per_rank_batch : (bi + 1) * loop.per_rank_batch]
        yb = loop.y_train[idx.to(loop.device)]
        with loop.autocast():
            logits = loop.step_module(loop.inputs(idx))
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=loop.label_smoothing)
        _optimizer_step(loop, loss)
        b_loss, b_correct, b_n = loop.dist.sum(loss.item() * len(idx), (logits.argmax(1) == yb).sum().item(), len(idx))
        loss_sum, correct, seen = loss_sum + b_loss, correct + b_correct, seen + b_n
        emit(
            callbacks,
            "on_step_end",
            {
                "step": loop.step,
                "epoch": epoch - 1 + (bi + 1) / loop.steps_per_epoch,
                "loss": b_loss / max(1, b_n),
                "lr": loop.optimizer.param_groups[0]["lr"],
                "images": seen,
                "total_steps": loop.total_steps,
                "elapsed": time.perf_counter() - loop.t_start,
            },
        )
    t_train = time.perf_counter() - t_epoch
    return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen), "images_per_sec": seen / max(t_train, 1e-9)}


@torch.inference_mode()
def evaluate(loop: Loop) -> tuple[float, float]:
    """Phase: validation loss and accuracy (each rank scores a slice; the sums are reduced)."""
    loop.model.eval()
    val_idx = torch.arange(loop.dist.rank, len(loop.x_val), loop.dist.world)
    loss_sum, correct = 0.0, 0
    for i in range(0, len(val_idx), 64):
        idx = val_idx[i : i + 64]
        with loop.autocast():
            logits = loop.val_logits(idx)
        yb = loop.y_val[idx.to(loop.device)]
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    loss_sum, correct, n = loop.dist.sum(loss_sum, correct, len(val_idx))
    return loss_sum / max(1, n), correct / max(1, n)
