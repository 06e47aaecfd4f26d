"""The session keys every page shares, and how widgets bind to them.

The pages keep their choices in ``st.session_state`` under the *canonical* keys of
:data:`DEFAULTS` (``data_dir``, ``model``, ``freeze``, ...). Widgets never own those keys:
Streamlit drops a widget's state when the page that draws it is not rendered, so each widget
gets its own key (``w_<name>``), is filled from the canonical value before it is drawn, and
copies its value back on change. :func:`bind` returns exactly those widget arguments::

    ss = st.session_state
    st.number_input("Epochs", 1, 500, **ui_state.bind(ss, "epochs"))

Everything here takes a plain ``MutableMapping`` (``st.session_state`` is one), so it is tested
without Streamlit and never imports it. It is the UI layer's module: the core never imports it.
Freeze-spec words live in :mod:`tl_dashboard.layers`, folder probes in :mod:`tl_dashboard.data`,
run presentation in ``views/present.py`` next to the pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping

from .engine import TrainConfig

__all__ = [
    "DEFAULTS",
    "WIDGET_PREFIX",
    "SOURCES",
    "sample_data_dir",
    "init_state",
    "require_router",
    "use_sample",
    "bind",
    "commit",
    "config_from_state",
]

WIDGET_PREFIX = "w_"

# Where the data comes from on the Data page.
SOURCES = {"sample": "Sample set", "folder": "Folder on this server", "upload": "Upload", "build": "Build your own"}


def sample_data_dir() -> Path:
    """The bundled emoji sample set: next to the package in a checkout, else under the working dir."""
    here = Path(__file__).resolve().parent.parent / "sample_data" / "emoji3"
    cwd = Path.cwd() / "sample_data" / "emoji3"
    return here if here.is_dir() or not cwd.is_dir() else cwd


def _defaults() -> dict[str, Any]:
    cfg = TrainConfig(data_dir=str(sample_data_dir()))
    d = cfg.to_dict()
    d.update(
        data_source="sample",  # how the data was chosen (see SOURCES)
        run_label="",  # optional label for the next run
        run_id=None,  # the last run this session started (the store stays the truth)
        builder_dir=None,  # folder of the "build your own" data set being made
        first_n=3,  # the N of the "first N blocks" preset
        model_query="",  # search box over all timm names
    )
    return d


DEFAULTS: dict[str, Any] = _defaults()


def init_state(state: MutableMapping[str, Any]) -> None:
    """Put every canonical key that is missing into ``state`` with its default."""
    for k, v in DEFAULTS.items():
        if k not in state:
            state[k] = v


def require_router(
    state: MutableMapping[str, Any], page: str, switch_page: Callable[..., Any], query: Mapping[str, str] | None = None
) -> None:
    """Send a page opened without the router (``app.py``) through it, then back to ``page``.

    Streamlit runs ``pages/x.py`` directly when it is the very first request a fresh server gets
    (its old pages-folder mode, before any ``st.navigation`` call), so ``app.py`` has not set
    up the state yet. Call at the top of every page with ``st.switch_page`` and the URL's query
    (``st.query_params.to_dict()``): a page switch drops it, and ``?ws=`` is the workspace, so a
    bookmarked ``/train?ws=...`` must reach the router with it.
    """
    if "data_dir" not in state:
        state["_deep_link"] = page
        if query:
            switch_page("app.py", query_params=dict(query))
        else:
            switch_page("app.py")


def use_sample(state: MutableMapping[str, Any]) -> None:
    """The quick start: sample data, the default model with its bundled weights, a linear probe."""
    for k in ("data_source", "data_dir", "model", "weights", "freeze", "bn_mode"):
        state[k] = DEFAULTS[k]


def commit(state: MutableMapping[str, Any], name: str) -> None:
    """on_change callback: copy the widget's value back into the canonical key."""
    state[name] = state[WIDGET_PREFIX + name]


def bind(state: MutableMapping[str, Any], name: str, after: Callable[[], None] | None = None) -> dict[str, Any]:
    """Widget kwargs for canonical key ``name``: ``key``, ``on_change`` and ``args``.

    The widget key is set from the canonical value first, so the widget shows the current
    choice even after another page changed it or after Streamlit dropped the widget's state.
    ``after`` runs (no arguments) after the value was copied back.
    """
    wkey = WIDGET_PREFIX + name
    state[wkey] = state[name]

    def _changed(state: MutableMapping[str, Any] = state) -> None:
        commit(state, name)
        if after is not None:
            after()

    return {"key": wkey, "on_change": _changed}


def config_from_state(state: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` the Train page would submit, from the canonical keys (each value
    coerced to its field's type by ``TrainConfig.from_dict``: one declaration in ``config.py``)."""
    return TrainConfig.from_dict({k: state.get(k, DEFAULTS.get(k)) for k in TrainConfig.__dataclass_fields__})
