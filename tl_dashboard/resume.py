"""Resume: a run that was interrupted or stopped continues from its last completed epoch.

After every epoch the engine writes ``resume.pt`` next to the checkpoint (atomically): the model
as it was after that epoch, the optimizer's and the schedule's state, the step counter, the RNG
states and :class:`RunProgress` (history, best epoch, early-stopping count, time spent). It is a
``torch.save`` of plain containers and tensors, read back with ``weights_only=True``.
:func:`resume_run` puts such a run back in the queue under the same id: its curves continue from
that epoch (later rows of an unfinished epoch are dropped) and it ends with the planned epochs.

Example:
    >>> resume_run(store, run_id)   # doctest: +SKIP
    'queued'
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .stats import epoch_rank

__all__ = [
    "why_not_resumable",
    "RESUME_FILE",
    "RunProgress",
    "ResumeError",
    "save_resume_state",
    "load_resume_state",
    "resume_run",
    "can_resume",
]

RESUME_FILE = "resume.pt"
RESUMABLE = ("interrupted", "stopped", "failed")


class ResumeError(UserError, ValueError):
    """A run that cannot be resumed (no such run, still active, or no completed epoch to start from)."""


@dataclass
class RunProgress:
    """What the completed epochs decided: history, the best epoch, early stopping's count, time spent.

    The kept model is the best epoch's by validation accuracy; ties go to the lower validation
    loss, and exact ties to the earlier epoch. Early stopping counts epochs since validation loss
    last reached a new minimum.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_acc: float = 0.0
    best_loss: float = math.inf
    min_loss: float = math.inf
    bad_epochs: int = 0
    early_stopped: bool = False
    wall_seconds: float = 0.0  # spent by earlier sessions of a resumed run
    cpu_seconds: float = 0.0

    def record(self, row: dict[str, Any], patience: int) -> bool:
        """Add an epoch's row; True when it is the new best (its weights become the checkpoint)."""
        self.history.append(row)
        better = self.best_epoch == 0 or epoch_rank(row) > epoch_rank({"val_acc": self.best_acc, "val_loss": self.best_loss})
        if better:
            self.best_epoch, self.best_acc, self.best_loss = row["epoch"], row["val_acc"], row["val_loss"]
        if row["val_loss"] < self.min_loss:
            self.min_loss, self.bad_epochs = row["val_loss"], 0
        else:
            self.bad_epochs += 1
        self.early_stopped = patience > 0 and self.bad_epochs >= patience
        return better


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume_state(
    out_dir: str | Path, epoch: int, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, progress: RunProgress
) -> Path:
    """Write ``resume.pt`` atomically: everything needed to continue after ``epoch``."""
    from .storage import atomic_write_bytes

    state = {
        "version": 1,
        "epoch": epoch,
        "step": step,
        "model": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(out_dir) / RESUME_FILE
    atomic_write_bytes(path, buf.getvalue(), what="the run's resume point")
    return path


def load_resume_state(out_dir: str | Path) -> dict[str, Any] | None:
    """The saved state (``weights_only`` load), or None when the run has no resume point."""
    path = Path(out_dir) / RESUME_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def apply_resume_state(state: dict[str, Any], model: torch.nn.Module, optimizer: Any, scheduler: Any) -> RunProgress:
    """Load the model, optimizer, schedule and RNG states; return the progress to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return RunProgress(**state["progress"])


def can_resume(store: Any, run_id: str) -> bool:
    """Whether the Runs page should offer Resume for this run."""
    run = store.get_run(run_id)
    return bool(run) and run["status"] in RESUMABLE and (store.run_dir(run_id) / RESUME_FILE).is_file()


def why_not_resumable(store: Any, run_id: str) -> str | None:
    """Why an ended run offers no Resume (one sentence for the Runs page), None when it can resume
    or is not an interrupted/stopped/failed run at all."""
    run = store.get_run(run_id)
    if not run or run["status"] not in RESUMABLE or can_resume(store, run_id):
        return None
    if int(run["config"].get("nproc") or 1) > 1:
        return "Cannot resume: it trained with several processes; resuming is for one process only."
    return (
        "Cannot resume: no epoch completed, so there is no resume point and no model. "
        "Start it again from the Train page (same settings: epoch 1 from scratch)."
    )


def resume_run(store: Any, run_id: str, *, start: bool = True) -> str:
    """Put an interrupted, stopped or failed run back in the queue from its last completed epoch.

    The run keeps its id; epoch and step rows after the resume point are dropped (an epoch that
    was cut short is trained again). With ``start`` a background worker is started.

    Raises:
        ResumeError: no such run, a run that is queued/running/finished, or no completed epoch.
    """
    run = store.get_run(run_id)
    if run is None:
        raise ResumeError(f"No run {run_id!r} in {store.root}. `tl-dashboard runs` lists them.")
    if run["status"] not in RESUMABLE:
        raise ResumeError(f"Run {run_id} is {run['status']}; only interrupted, stopped or failed runs can be resumed.")
    if int(run["config"].get("nproc") or 1) > 1:
        raise ResumeError(f"Run {run_id} trained with {run['config']['nproc']} processes; resuming is for one process only.")
    state = load_resume_state(store.run_dir(run_id))
    if state is None:
        raise ResumeError(
            f"Run {run_id} cannot resume: no epoch completed, so it has no resume point; start it again instead (epoch 1, from scratch)."
        )
    store.requeue_from(run_id, state["epoch"], state["step"])
    store.log(run_id, "info", f"Resuming from the end of epoch {state['epoch']} (step {state['step']}).")
    if start:
        from .worker import start_worker

        start_worker(store)
    return "queued"
