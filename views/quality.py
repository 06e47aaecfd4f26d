"""Widgets for honest numbers: the learning-rate finder panel on the Train page."""

from __future__ import annotations

from typing import Any, MutableMapping

import streamlit as st

from tl_dashboard import charts
from tl_dashboard import ui_state as ui
from views import widgets

FINDER_STEPS = 100  # lr_find's default sweep


def _apply(state: MutableMapping[str, Any], lr: float) -> None:
    state["lr"] = float(f"{lr:.1e}")  # 2 significant digits: what the slider can show
    if not state.get("epochs"):
        state["epochs"] = 10  # a learning rate means AdamW for a number of epochs; auto would ignore it


def lr_finder_panel(state: MutableMapping[str, Any]) -> None:
    """An expander: run the range test for the current settings, plot loss vs lr, apply the suggestion."""
    with st.expander("Find a learning rate (range test)"):
        _finder_body(state)


@st.fragment  # a rerun of this panel only: the rest of the page stays drawn (not greyed out) while it sweeps
def _finder_body(state: MutableMapping[str, Any]) -> None:
    bs = int(state.get("batch_size") or 32)
    st.caption(
        f"Trains a copy of your model for up to {FINDER_STEPS} batches of {bs} images while the learning "
        "rate grows from 1e-7 to 10, and plots the loss (fastai's lr_find). The suggestion is in the steepest, "
        "longest part of the descent, well before the loss blows up. Nothing is saved. Head only: the frozen "
        f"features are computed once, then the {FINDER_STEPS} steps take seconds; with blocks that train it "
        f"takes about as long as {FINDER_STEPS} training steps ({FINDER_STEPS * bs:,} images forward and back)."
    )
    if st.button(
        f"Run the finder ({FINDER_STEPS} steps)",
        icon=":material/search:",
        key="lr_find_run",
        help="Other sessions keep training meanwhile; this page's other buttons wait until it ends.",
    ):
        from tl_dashboard.lr_finder import lr_find

        bar = st.progress(0.0, text="Loading the data and the model…")

        def step(k: int, n: int) -> None:
            bar.progress(k / n, text=f"Sweeping the learning rate: step {k} of {n}")

        def note(line: str) -> None:
            if line.startswith("Computing"):
                bar.progress(0.0, text=line)

        with widgets.reported("No learning-rate test"):
            state["lr_find_result"] = lr_find(ui.config_from_state(state), num_iter=FINDER_STEPS, progress=note, on_step=step).to_dict()
        bar.empty()
    res = state.get("lr_find_result")
    if not res:
        return
    widgets.plot(
        charts.lr_find_figure(res["curve"], res["suggested_lr"], {"steepest": res["steep_lr"], "min/10": res["min_lr"]}), "lr_find_chart"
    )
    st.caption(
        f"{res['freeze_label']}: {res['iterations']} batches in {res['seconds']:.0f} s"
        + (", stopped when the loss diverged" if res["stopped_early"] else "")
        + "."
    )
    if st.button(f"Use {res['suggested_lr']:.1e}", key="lr_find_apply", help="Sets the learning rate (and 10 epochs if epochs were auto)."):
        _apply(state, res["suggested_lr"])
        st.rerun()  # the whole page: the slider and the epochs show the new values
