"""The fair queue: which queued run trains next, how many may train at once, where yours stands.

One shared server, many people: the queue is round-robin across workspaces. The next run is
the oldest queued run of the workspace that was served least recently (the one whose last run
*started* longest ago, or never), so one person's five-run sweep does not make the class wait
for all five. Within one workspace runs keep their order. Runs without an owner (the CLI,
stores made before workspaces) form one more workspace of their own.

Limits a host sets:

* ``TL_MAX_RUNNING``: runs training at once. Default: one per CUDA GPU, else 1 (a small CPU
  gets slower, not faster, with two runs fighting for its cores).
* ``TL_MAX_QUEUED_PER_WORKSPACE``: queued runs one workspace may have waiting (0 or unset: no
  limit). The teacher can change it at runtime (stored in the run store's ``settings``) and is
  not bound by it.

This module never imports streamlit.

Example:
    >>> fair_order([{"id": "a1", "workspace": "A", "created": 1}, {"id": "a2", "workspace": "A", "created": 2},
    ...             {"id": "b1", "workspace": "B", "created": 3}], {})
    ['a1', 'b1', 'a2']
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .runs import RunStore

__all__ = [
    "QueueFull",
    "check_queue_limit",
    "default_max_running",
    "fair_order",
    "max_queued_per_workspace",
    "max_running",
    "queue_view",
    "set_max_queued_per_workspace",
    "typical_run_seconds",
]

LIMIT_KEY = "max_queued_per_workspace"


class QueueFull(UserError):
    """A workspace already has as many queued runs as the host allows."""


def fair_order(queued: Sequence[Mapping[str, Any]], last_started: Mapping[str, float | None]) -> list[str]:
    """The order in which the queued runs will start.

    Args:
        queued: ``{"id", "workspace", "created"}`` per queued run (workspace None = no owner).
        last_started: ``{workspace or "": when its latest run started}`` (missing: never).

    Returns:
        Run ids, the next one first: round-robin across workspaces, least recently served first
        (ties: the workspace whose oldest queued run is older), oldest first within a workspace.
    """
    lanes: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(queued, key=lambda r: float(r.get("created") or 0)):
        lanes.setdefault(r.get("workspace") or "", []).append(r)
    served = {ws: float(last_started.get(ws) or -math.inf) for ws in lanes}
    order: list[str] = []
    tick = max([v for v in served.values() if v != -math.inf] + [time.time()])
    while lanes:
        ws = min(lanes, key=lambda w: (served[w], float(lanes[w][0].get("created") or 0)))
        order.append(str(lanes[ws].pop(0)["id"]))
        tick += 1.0
        served[ws] = tick  # just served: goes to the back of the line
        if not lanes[ws]:
            del lanes[ws]
    return order


def default_max_running() -> int:
    """One run per CUDA GPU; 1 without one (two runs on a small CPU only slow each other)."""
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable CUDA: the CPU default
        n = 0
    return max(1, n)


def max_running() -> int:
    """How many runs may train at once: ``TL_MAX_RUNNING`` or :func:`default_max_running`."""
    raw = os.environ.get("TL_MAX_RUNNING", "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            pass
    return default_max_running()


def max_queued_per_workspace(store: RunStore) -> int:
    """Queued runs one workspace may have (0 = no limit): the teacher's setting, else the env."""
    rows = store._query("SELECT value FROM settings WHERE key=?", (LIMIT_KEY,))
    raw = rows[0]["value"] if rows else os.environ.get("TL_MAX_QUEUED_PER_WORKSPACE", "0")
    try:
        return max(0, int(raw))
    except (TypeError, ValueError):
        return 0


def set_max_queued_per_workspace(store: RunStore, limit: int | None) -> None:
    """Store the limit (teacher controls); ``None`` goes back to the environment's value."""
    with store._tx() as con:
        if limit is None:
            con.execute("DELETE FROM settings WHERE key=?", (LIMIT_KEY,))
        else:
            con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (LIMIT_KEY, str(max(0, int(limit)))))


def check_queue_limit(store: RunStore, workspace: str | None, adding: int = 1, *, admin: bool = False) -> None:
    """Raise :class:`QueueFull` when ``workspace`` may not queue ``adding`` more runs."""
    limit = max_queued_per_workspace(store)
    if admin or not limit or workspace is None:
        return
    have = store._query("SELECT COUNT(*) AS n FROM runs WHERE status='queued' AND workspace=?", (workspace,))[0]["n"]
    if have + adding > limit:
        raise QueueFull(
            f"You already have {have} run(s) waiting and this server allows {limit} per person; "
            f"{'this adds ' + str(adding) + ', ' if adding > 1 else ''}wait for one to start or cancel one."
        )


def typical_run_seconds(store: RunStore, n: int = 20) -> float | None:
    """Median duration of the last ``n`` finished runs (None before any finished)."""
    rows = store._query(
        "SELECT finished - started AS d FROM runs WHERE status='finished' AND started IS NOT NULL "
        "AND finished IS NOT NULL ORDER BY finished DESC LIMIT ?",
        (n,),
    )
    ds = [float(r["d"]) for r in rows if r["d"] is not None and r["d"] >= 0]
    return statistics.median(ds) if ds else None


def _remaining(store: RunStore, run: Mapping[str, Any], typical: float | None, now: float) -> float | None:
    """Seconds the running ``run`` still needs: from its own recent steps (as the Train page's "about
    ... left"), else its progress, else the typical run; None when nothing tells (never a made-up 0)."""
    p = run.get("progress") or {}
    step, total, elapsed = int(p.get("step") or 0), int(p.get("total_steps") or 0), p.get("elapsed")
    steps = store.steps(run["id"], after=max(-1, step - 50)) if total else []
    if len(steps) >= 2 and total:
        dt, ds = float(steps[-1]["time"]) - float(steps[0]["time"]), int(steps[-1]["step"]) - int(steps[0]["step"])
        if dt > 0 and ds > 0:
            return max(0.0, dt / ds * (total - max(step, int(steps[-1]["step"]))))
    if step and total and elapsed:
        return max(0.0, float(elapsed) / step * (total - step))
    if typical is not None:
        return max(0.0, typical - (now - float(run.get("started") or now)))
    return None


def queue_view(store: RunStore, workspace: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Every queued run in start order with its place in line and an estimated wait.

    Args:
        workspace: keep only this workspace's runs (their ``position`` still counts everyone's).

    Returns:
        ``{"id", "workspace", "position" (1 = next), "ahead" (runs before it),
        "wait_s" (estimated seconds until it starts; None when unknown: the running run has no
        measured steps yet and no finished run gives a typical duration)}``.
    """
    now = time.time() if now is None else now
    queued, last = store._queue_rows()
    order = fair_order(queued, last)
    owner = {r["id"]: r.get("workspace") for r in queued}
    typical = typical_run_seconds(store)
    slots: list[float | None] = [_remaining(store, r, typical, now) for r in store.list_runs("running")]
    slots = (slots + [0.0] * max_running())[: max(max_running(), len(slots))]
    out = []
    for i, run_id in enumerate(order):  # each run takes the slot that frees first; unknown (None) stays unknown
        k = min(range(len(slots)), key=lambda j: math.inf if slots[j] is None else slots[j])
        wait = slots[k]
        slots[k] = None if wait is None or typical is None else wait + typical
        if workspace is None or owner[run_id] == workspace:
            out.append({"id": run_id, "workspace": owner[run_id], "position": i + 1, "ahead": i, "wait_s": wait})
    return out
