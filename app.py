"""TL Dashboard: the router. Run with ``streamlit run app.py``.

Each page in ``pages/`` is a short script of one idea. The choices they share live in
``st.session_state`` under the keys of ``tl_dashboard.ui_state.DEFAULTS``; the runs live in the
RunStore (``TL_RUNS_DIR`` or ``./runs``), never in the page.
"""
from pathlib import Path

import streamlit as st

from tl_dashboard import ui_state

PAGES = Path(__file__).parent / "pages"


def run() -> None:
    st.set_page_config(page_title="TL Dashboard", page_icon=":material/model_training:", layout="wide")
    ui_state.init_state(st.session_state)
    page = st.navigation([
        st.Page(PAGES / "home.py", title="Home", icon=":material/home:", default=True),
        st.Page(PAGES / "data.py", title="Data", icon=":material/photo_library:"),
        st.Page(PAGES / "model.py", title="Model", icon=":material/account_tree:"),
        st.Page(PAGES / "train.py", title="Train", icon=":material/play_circle:"),
        st.Page(PAGES / "runs.py", title="Runs", icon=":material/history:"),
    ])
    page.run()


if __name__ == "__main__":
    run()
