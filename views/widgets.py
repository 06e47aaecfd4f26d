"""The Streamlit pieces several pages share: flash messages, live polling, the curve pair, errors.

Pages stay thin: widgets in, one core call, figures out. What more than one page draws lives here
once (the flash message, the fragment that polls the store while runs are live, the loss and
accuracy charts side by side, and how an error reaches the user).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import streamlit as st

from tl_dashboard import charts
from tl_dashboard.data import IMAGE_EXTENSIONS
from tl_dashboard.errors import UserError

__all__ = [
    "IMAGE_TYPES",
    "PLOTLY_CONFIG",
    "flash",
    "show_flash",
    "live_fragment",
    "pace",
    "sessions_here",
    "polling",
    "view_age",
    "plot",
    "curves",
    "unexpected",
    "reported",
    "auto_number",
]

# What the upload widgets accept: exactly the images the scanner reads.
IMAGE_TYPES = [e.lstrip(".") for e in IMAGE_EXTENSIONS]
# Plotly's toolbar shows only while the pointer is over a chart, so it never hides a title or legend.
PLOTLY_CONFIG = {"displayModeBar": "hover", "displaylogo": False}


def flash(page: str, kind: str, text: str) -> None:
    """Keep a message for the next run of ``page`` (callbacks run before the page draws).

    Args:
        page: the page's short name; the message lives in ``st.session_state[f"{page}_flash"]``.
        kind: ``success``, ``info``, ``warning`` or ``error``.
        text: the message (Markdown).
    """
    st.session_state[f"{page}_flash"] = (kind, text)


def show_flash(page: str) -> None:
    """Show (once) the message :func:`flash` or :func:`reported` kept for ``page``."""
    if f"{page}_flash" in st.session_state:
        _show(*st.session_state.pop(f"{page}_flash"))


# A class on one server: past this many sessions, live views poll proportionally less often, so
# the tabs together cost the server about what ten do and the CPU goes to training
# (benchmarks/bench_classroom.py: 30 sessions at a fixed 2 s pace took 18% of a core from the run).
SESSIONS_PER_PACE = 10
_SEEN: dict[str, float] = {}  # session id -> its last script run (time.monotonic()), in this server
_SEEN_LOCK = threading.Lock()


def sessions_here(window: float = 30.0) -> int:
    """Sessions of this server that ran a page in the last ``window`` seconds (this one included)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx, now = get_script_run_ctx(suppress_warning=True), time.monotonic()
    with _SEEN_LOCK:
        if ctx is not None:
            _SEEN[ctx.session_id] = now
        for sid in [sid for sid, t in _SEEN.items() if now - t > window]:
            del _SEEN[sid]
        return max(1, len(_SEEN))


def pace(every: float) -> float:
    """A live view's polling interval: ``every`` seconds for up to :data:`SESSIONS_PER_PACE`
    sessions on the server, then stretched in proportion (30 sessions: 3 times longer)."""
    return every * round(2 * max(1.0, sessions_here() / SESSIONS_PER_PACE)) / 2  # in half steps: 1, 1.5, 2, 2.5, 3...


def live_fragment(active: bool, every: float = 2.0) -> Callable[[Callable[..., bool]], Callable[..., None]]:
    """Decorator: a fragment that polls every ``every`` seconds (see :func:`pace`) while ``active``.

    The decorated body returns whether anything is still live (``None``: it does not say); when a
    live view finds that it is not any more, the whole page reruns once (buttons change, polling stops). Decorate inside the
    page script, so ``active`` is read on each full run::

        @widgets.live_fragment(any_active)
        def runs_view() -> bool:
            ...
            return any(r["status"] in ACTIVE_STATUSES for r in runs)
    """

    def wrap(body: Callable[..., bool]) -> Callable[..., None]:
        interval = pace(every) if active else None

        @st.fragment(run_every=interval)
        @functools.wraps(body)  # the fragment's id comes from the body's name, one per view
        def view(*args: Any, **kwargs: Any) -> None:
            still_active = body(*args, **kwargs)
            if active and still_active is False:
                st.rerun()  # it ended: redraw the whole page once, and stop polling
            if interval and polling() and not 2 / 3 < pace(every) / interval < 3 / 2:
                st.rerun()  # the class grew or left since this page ran: poll at the new pace

        return view

    return wrap


def polling() -> bool:
    """Whether this script run is a live fragment's background poll, not a run the user caused."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return bool(ctx and ctx.fragment_ids_this_run)


def view_age() -> float:
    """How old a shared :func:`tl_dashboard.liveview.run_view` may be here: 1 s for a background
    poll (everyone watching a run shares one read), 0 for a click or a reload (always fresh)."""
    return 1.0 if polling() else 0.0


def plot(fig: Any, key: str, where: Any = st, **options: Any) -> Any:
    """``st.plotly_chart`` with the toolbar on hover only (every chart of the app goes through here).

    ``options`` go to ``plotly_chart`` (e.g. ``on_select="rerun"``); returns what it returns.
    """
    return where.plotly_chart(fig, key=key, config=PLOTLY_CONFIG, **options)


def curves(
    steps: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    key: str,
    live: bool = False,
    memo: Callable[[Any, Callable[[], Any]], Any] | None = None,
) -> None:
    """The loss and accuracy charts of one run, side by side.

    Args:
        steps, epochs: ``RunStore.steps`` and ``RunStore.epochs`` of the run.
        run: the run's row (its config gives the planned epochs, its summary the unfreeze marker).
        key: prefix of the two charts' widget keys (``{key}_loss``, ``{key}_accuracy``).
        live: fix the x axis to the planned epochs, so a growing curve does not rescale it.
        memo: ``RunView.memo`` when the data come from a shared live view: each figure is then built
            once per view for every session showing it (building them was most of a poll's cost).
    """
    if not epochs:  # queued, or still in epoch 1: empty axes say nothing, a sentence does
        last = next((s for s in reversed(steps) if s.get("loss") is not None), None)
        st.caption(
            "No completed epoch yet: the loss and accuracy curves appear after the first epoch."
            + (f" Training loss after {len(steps)} step(s): {float(last['loss']):.3f}." if last else "")
        )
        return
    n_epochs = (run.get("config") or {}).get("epochs") if live else None
    unfreeze = (run.get("summary") or {}).get("unfreeze")
    figures = {
        "loss": lambda: charts.loss_figure(steps, epochs, n_epochs=n_epochs, unfreeze=unfreeze),
        "accuracy": lambda: charts.accuracy_figure(epochs, n_epochs=n_epochs, unfreeze=unfreeze),
    }
    for (name, build), where in zip(figures.items(), st.columns(2), strict=True):
        fig = memo((name, n_epochs), build) if memo else build()  # shared read-only: plotly_chart copies it (to_dict)
        plot(fig, f"{key}_{name}", where)


def auto_number(
    where: Any, label: str, name: str, lo: int, hi: int, *, step: int = 1, placeholder: str = "auto", help: str | None = None
) -> None:
    """A number input for a setting whose 0 means "auto": empty (showing ``placeholder``) while auto.

    The canonical key ``name`` keeps 0 for auto (``TrainConfig``'s meaning); the widget (key
    ``w_{name}``) shows nothing instead of a misleading 0, and clearing it goes back to auto.
    """
    state = st.session_state
    wkey = f"w_{name}"
    state[wkey] = int(state[name]) if state.get(name) else None

    def _changed() -> None:
        state[name] = int(state[wkey] or 0)

    where.number_input(label, lo, hi, step=step, value=None, placeholder=placeholder, key=wkey, on_change=_changed, help=help)


def unexpected(exc: BaseException, what: str) -> None:
    """Show an error that is not the user's doing: one line, and the traceback one click away."""
    st.error(
        f"{what}: an unexpected error ({type(exc).__name__}: {exc}). This is not something you did; "
        "the details below help whoever runs this server."
    )
    with st.expander("Details (traceback)"):
        st.exception(exc)


@contextmanager
def reported(what: str, page: str | None = None) -> Iterator[None]:
    """Run a block; if it fails, tell the user and go on with the page.

    A :class:`~tl_dashboard.errors.UserError` (a bad folder, a full disk, a run without a model...) is
    shown as ``"{what}: {its one-line message}"``; anything else is :func:`unexpected`, with its
    traceback, never passed off as the user's mistake. With ``page``, the message is kept for that
    page's next run instead (for ``on_click``/``on_change`` callbacks, which run before the page draws).
    """
    try:
        yield
    except UserError as exc:
        _say(page, ("error", f"{what}: {exc}"))
    except Exception as exc:  # a bug, or the machine: shown as such, with its traceback
        _say(page, ("exception", (what, exc)))


def _say(page: str | None, message: tuple[str, Any]) -> None:
    if page is not None:
        st.session_state[f"{page}_flash"] = message
    else:
        _show(*message)


def _show(kind: str, payload: Any) -> None:
    if kind == "exception":
        what, exc = payload
        unexpected(exc, what)
    else:
        getattr(st, kind)(payload)
