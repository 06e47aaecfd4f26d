"""Widgets for honest numbers: the learning-rate finder panel on the Train page."""
from __future__ import annotations

from typing import Any, MutableMapping

import streamlit as st

from tl_dashboard import charts
from tl_dashboard import ui_state as ui
from views import widgets


def _apply(state: MutableMapping[str, Any], lr: float) -> None:
    state["lr"] = float(f"{lr:.1e}")  # 2 significant digits: what the slider can show
    if not state.get("epochs"):
        state["epochs"] = 10  # a learning rate means AdamW for a number of epochs; auto would ignore it


def lr_finder_panel(state: MutableMapping[str, Any]) -> None:
    """An expander: run the range test for the current settings, plot loss vs lr, apply the suggestion."""
    with st.expander("Find a learning rate (range test)"):
        st.caption("Trains a copy of your model for up to 100 batches while the learning rate grows from 1e-7 to 10, "
                   "and plots the loss (fastai's lr_find). The suggestion is in the steepest, longest part of the "
                   "descent, well before the loss blows up. Nothing is saved. With a backbone that trains this takes "
                   "as long as about 100 training steps.")
        if st.button("Run the finder", icon=":material/search:", key="lr_find_run"):
            from tl_dashboard.lr_finder import lr_find

            with st.spinner("Sweeping the learning rate…"), widgets.reported("No learning-rate test"):
                state["lr_find_result"] = lr_find(ui.config_from_state(state)).to_dict()
        res = state.get("lr_find_result")
        if not res:
            return
        widgets.plot(charts.lr_find_figure(res["curve"], res["suggested_lr"],
                                           {"steepest": res["steep_lr"], "min/10": res["min_lr"]}), "lr_find_chart")
        st.caption(f"{res['freeze_label']}: {res['iterations']} batches in {res['seconds']:.0f} s"
                   + (", stopped when the loss diverged" if res["stopped_early"] else "") + ".")
        st.button(f"Use {res['suggested_lr']:.1e}", key="lr_find_apply", on_click=_apply,
                  args=(state, res["suggested_lr"]), help="Sets the learning rate (and 10 epochs if epochs were auto).")
