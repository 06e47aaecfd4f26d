"""Honest time: what a run cost, in seconds on this machine and in machine-independent GFLOPs.

:class:`Clock` records wall time, the process's CPU time and the load average at the start and
the end of a run; a run "shared the machine" when the 1-minute load average at its start or end
exceeded the number of cores by one or more (something else was running besides this run's own
work), or when other runs of the store trained at the same time (the worker adds that).
:func:`gflops_per_epoch` counts the floating-point operations of one training step once, with
``torch.utils.flop_counter.FlopCounterMode``, and scales them to an epoch.

Example:
    >>> clock = Clock()
    >>> sorted(clock.stop())
    ['cpu_seconds', 'load_avg', 'shared_machine', 'wall_seconds']
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["Clock", "gflops_per_epoch", "load_average"]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


class Clock:
    """Wall and process CPU seconds since creation (plus ``before_*`` from earlier sessions of a resumed run)."""

    def __init__(self, before_wall: float = 0.0, before_cpu: float = 0.0) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.before_wall, self.before_cpu = before_wall, before_cpu
        self.load_start = load_average()

    def wall(self) -> float:
        return self.before_wall + time.perf_counter() - self.t0

    def cpu(self) -> float:
        return self.before_cpu + time.process_time() - self.c0

    def stop(self) -> dict[str, Any]:
        """``wall_seconds``, ``cpu_seconds``, ``load_avg`` ({start, end, cores}) and ``shared_machine``."""
        end, cores = load_average(), os.cpu_count() or 1
        loads = [x for x in (self.load_start, end) if x is not None]
        return {
            "wall_seconds": round(self.wall(), 3),
            "cpu_seconds": round(self.cpu(), 3),
            "load_avg": {"start": self.load_start, "end": end, "cores": cores},
            "shared_machine": bool(loads) and max(loads) >= cores + 1,
        }


def gflops_per_epoch(
    step: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, n_train: int, params: Callable[[], list[torch.nn.Parameter]]
) -> float | None:
    """Forward + backward GFLOPs of one training step on ``inputs``, scaled to ``n_train`` images.

    Counted in eval mode (BatchNorm statistics untouched, no dropout draws) and without touching
    the global RNG; the gradients it makes are cleared. On the cached path ``step`` is only the
    trainable suffix; on the full path it includes the frozen prefix's forward pass, which the
    run really computes every epoch. None when counting fails (an operator the counter rejects).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = step.training
    step.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            loss = F.cross_entropy(step(inputs).float(), labels)
            if loss.requires_grad:
                loss.backward()
        flops = counter.get_total_flops()
    except Exception:  # a cost estimate must never fail the run
        return None
    finally:
        for p in params():
            p.grad = None
        step.train(was_training)
    return round(flops / max(1, len(inputs)) * n_train / 1e9, 4)
