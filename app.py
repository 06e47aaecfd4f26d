"""TL Dashboard: the router. Run with ``streamlit run app.py``.

Each page in ``pages/`` is a short script of one idea. The choices they share live in
``st.session_state`` under the keys of ``tl_dashboard.ui_state.DEFAULTS``; the runs live in the
RunStore (``TL_RUNS_DIR`` or ``./runs``), never in the page.
"""
from pathlib import Path

import streamlit as st

from tl_dashboard import ui_state

PAGES = Path(__file__).parent / "pages"

# (file, title, icon) in menu order; a file that is not there (yet) is left out of the menu.
MENU = [
    ("home.py", "Home", ":material/home:"),
    ("data.py", "Data", ":material/photo_library:"),
    ("model.py", "Model", ":material/account_tree:"),
    ("train.py", "Train", ":material/play_circle:"),
    ("runs.py", "Runs", ":material/history:"),
    ("evaluate.py", "Evaluate", ":material/fact_check:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("learn.py", "Learn", ":material/school:"),
]


def run() -> None:
    st.set_page_config(page_title="TL Dashboard", page_icon=":material/model_training:", layout="wide")
    ui_state.init_state(st.session_state)
    page = st.navigation([
        st.Page(PAGES / name, title=title, icon=icon, default=(name == "home.py"))
        for name, title, icon in MENU if (PAGES / name).is_file()
    ])
    if "_deep_link" in st.session_state:  # a page was opened before the router ran: go back to it
        st.switch_page(st.session_state.pop("_deep_link"))
    page.run()


if __name__ == "__main__":
    run()
