"""One shared, short-lived view of a live run for everyone on the server who watches it.

A class of thirty on the Train page polls the teacher's run (or each other's) every 2 to 4 s per
tab. Read and drawn per tab, that was the run's row, every step and two plotly figures built per
poll: most of the server's CPU, taken from the training process on the same cores
(``benchmarks/bench_classroom.py``). Here a run is read at most once per ``max_age`` seconds per
server process (its new steps only, while it trains), and what a page builds from the read (the
figures) is built once per view and shared by every session showing it.

A view is at most ``max_age`` old, so pages use it for background polls only; a run of the page
the user caused (a click, a reload) passes ``max_age=0`` and gets, and shares, a fresh read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .runs import RunStore

__all__ = ["RunView", "run_view", "forget"]

_LOCK = threading.Lock()
_VIEWS: dict[tuple[str, str], RunView] = {}
_KEEP_S = 120.0  # views nobody asked for in this long are dropped


@dataclass(frozen=True, eq=False)
class RunView:
    """A run as read at ``taken`` (``time.monotonic()``): its row, steps, epochs and log.

    Treat it as read-only: every session watching the run gets the same object.
    """

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    taken: float
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """What ``build()`` returns for this view, built once and shared (e.g. a figure's dict)."""
        try:
            return self._memo[key]
        except KeyError:
            return self._memo.setdefault(key, build())


def run_view(store: RunStore, run_id: str, max_age: float = 1.0) -> RunView | None:
    """The run's shared view, read again if older than ``max_age`` seconds; None if the run is gone.

    While the run keeps training, a new read fetches only the steps after the last one it has
    (a resumed run drops later steps, so any other change of status reads them all again).
    """
    key = (str(store.db_path), run_id)
    now = time.monotonic()
    with _LOCK:  # one reader per server: the others wait for it and share its view
        old = _VIEWS.get(key)
        if old is not None and max_age > 0 and now - old.taken < max_age:
            return old
        run = store.get_run(run_id)
        if run is None:
            _VIEWS.pop(key, None)
            return None
        incremental = old is not None and old.run["status"] == run["status"] == "running" and old.run.get("started") == run.get("started")
        if incremental and old.steps:
            steps = old.steps + store.steps(run_id, after=old.steps[-1]["step"])
        else:
            steps = store.steps(run_id)
        view = RunView(run, steps, store.epochs(run_id), store.logs(run_id), now)
        for k in [k for k, v in _VIEWS.items() if now - v.taken > _KEEP_S]:
            del _VIEWS[k]
        _VIEWS[key] = view
        return view


def forget() -> None:
    """Drop every view (tests; a store replaced under the server)."""
    with _LOCK:
        _VIEWS.clear()
