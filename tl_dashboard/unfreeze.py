"""The unfreeze schedule as one unit: freeze -> fit -> unfreeze the last blocks -> fit.

In the spirit of fastai's ``fine_tune`` and Lightning's ``BackboneFinetuning``: one object owns
which blocks unfreeze, at which epoch and at which learning rate. The training loop asks it three
things: the optimizer's extra parameter group (:meth:`param_group`), the blocks that stay frozen
all run (:meth:`frozen_all_run`, what the feature cache may hold), and, at the start of every
epoch, :meth:`finetune_function` (``requires_grad`` and the freeze plan in effect that epoch).
:meth:`plan_at` is a pure function of the epoch, so a resumed run lands in the same state.

Example:
    >>> sched = UnfreezeSchedule.from_config(config, blocks, plan)     # doctest: +SKIP
    >>> sched.blocks, sched.epoch                                       # doctest: +SKIP
    (['blocks.6', 'neck'], 2)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from .config import ConfigError
from .layers import Block, FreezePlan

__all__ = ["UnfreezeSchedule", "UnfreezeError"]


class UnfreezeError(ConfigError):
    """An unfreeze schedule that cannot work (e.g. unfreezing before the first epoch)."""


@dataclass
class UnfreezeSchedule:
    """Unfreeze ``blocks`` (the last frozen ones) at the start of ``epoch``, at ``lr x lr_scale``."""

    plan: FreezePlan  # the plan the run starts with
    all_blocks: list[Block]
    blocks: list[str]  # empty: no schedule
    epoch: int = 0
    lr_scale: float = 1.0

    @classmethod
    def from_config(cls, config: Any, blocks: Sequence[Block], plan: FreezePlan) -> UnfreezeSchedule:
        """The schedule of ``config.unfreeze_at / unfreeze_blocks / backbone_lr_scale``."""
        if config.unfreeze_at <= 0 or config.unfreeze_blocks <= 0:
            return cls(plan, list(blocks), [])
        if config.unfreeze_at == 1:
            raise UnfreezeError("--unfreeze-at 1 would unfreeze before any training; use 2 or later, or freeze less.")
        frozen_body = [b.name for b in blocks if b.name in plan.frozen]
        late = frozen_body[-config.unfreeze_blocks :]
        return cls(plan, list(blocks), late, config.unfreeze_at, config.backbone_lr_scale)

    @property
    def active(self) -> bool:
        return bool(self.blocks)

    def frozen_all_run(self) -> int:
        """How many leading blocks stay frozen for the whole run (the prefix the feature cache may hold)."""
        k = 0
        for b in self.all_blocks:
            if b.name not in self.plan.frozen or b.name in self.blocks:
                break
            k += 1
        return k

    def plan_at(self, epoch: int) -> FreezePlan:
        """The freeze plan in effect during ``epoch`` (1-based)."""
        if not self.active or epoch < self.epoch:
            return self.plan
        return replace(self.plan, frozen=[n for n in self.plan.frozen if n not in self.blocks])

    def _params(self, model: nn.Module) -> list[nn.Parameter]:
        names = {n for b in self.all_blocks if b.name in self.blocks for n in b.param_names(model)}
        return [p for n, p in model.named_parameters() if n in names]

    def param_group(self, model: nn.Module, lr: float) -> dict[str, Any] | None:
        """The optimizer group of the blocks to unfreeze: untouched (no grads) until their epoch."""
        params = self._params(model)
        return {"params": params, "lr": lr * self.lr_scale} if params else None

    def finetune_function(self, model: nn.Module, epoch: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Called at the start of every epoch: set ``requires_grad`` for ``epoch``; True when it changed."""
        if not self.active:
            return False
        on = epoch >= self.epoch
        params = self._params(model)
        changed = any(p.requires_grad != on for p in params)
        for p in params:
            p.requires_grad_(on)
        return changed

    def info(self) -> dict[str, Any] | None:
        return {"epoch": self.epoch, "blocks": self.blocks, "lr_scale": self.lr_scale} if self.active else None
