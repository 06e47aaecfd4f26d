"""TL Dashboard: the router. Run with ``streamlit run app.py``.

Each page in ``pages/`` is a short script of one idea. The choices they share live in
``st.session_state`` under the keys of ``tl_dashboard.ui_state.DEFAULTS``; the runs live in the
RunStore (``TL_RUNS_DIR`` or ``./runs``), never in the page. Around every page run the router
keeps those choices in the store under the visitor's workspace (``?ws=`` in the URL), so a
reload, a bookmark or a second tab gets exactly the same ones (``tl_dashboard.workspaces``).
"""

import sqlite3
from pathlib import Path

import streamlit as st

from tl_dashboard import ui_state, workspaces
from tl_dashboard.errors import UserError
from tl_dashboard.runs import RunStore, default_runs_dir
from tl_dashboard.storage import disk_full_from, is_disk_full
from views import workspace

PAGES = Path(__file__).parent / "pages"

# (file, title, icon) in menu order; a file that is not there (yet) is left out of the menu.
MENU = [
    ("home.py", "Home", ":material/home:"),
    ("data.py", "Data", ":material/photo_library:"),
    ("model.py", "Model", ":material/account_tree:"),
    ("train.py", "Train", ":material/play_circle:"),
    ("runs.py", "Runs", ":material/history:"),
    ("evaluate.py", "Evaluate", ":material/fact_check:"),
    ("labels.py", "Label issues", ":material/rule:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("learn.py", "Learn", ":material/school:"),
]


def sidebar(store: RunStore, ws_id: str) -> None:
    """Your name, what the URL means, and the teacher's password box (when the server has one)."""
    ss = st.session_state
    ws = workspaces.get_workspace(store, ws_id) or {}

    def rename() -> None:
        workspaces.rename_workspace(store, ws_id, ss.ws_name)

    def unlock() -> None:
        typed, ss.admin_typed = ss.admin_typed, ""
        if workspaces.is_admin(typed):
            ss[workspace.ADMIN_KEY] = typed
        else:
            ss["admin_flash"] = "Wrong teacher password."

    with st.sidebar:
        ss.ws_name = ws.get("name", "")
        st.text_input(
            "Your name (optional)",
            key="ws_name",
            on_change=rename,
            max_chars=60,
            help="Shown next to your runs on the Runs and Compare pages.",
        )
        st.caption(
            "This page's address is your workspace: bookmark it to come back to your choices and runs. Anyone with the link can act as you."
        )
        if workspaces.admin_configured():
            if workspace.admin_password(ss):
                st.success("Teacher mode: you can stop, cancel and delete any run.", icon=":material/school:")
                st.button("Leave teacher mode", key="admin_leave", on_click=lambda: ss.pop(workspace.ADMIN_KEY, None))
            else:
                st.text_input(
                    "Teacher password",
                    type="password",
                    key="admin_typed",
                    on_change=unlock,
                    help="Unlocks stop, cancel and delete of every run, and the queue limit.",
                )
                if "admin_flash" in ss:
                    st.error(ss.pop("admin_flash"))


def run() -> None:
    st.set_page_config(page_title="TL Dashboard", page_icon=":material/model_training:", layout="wide")
    ss = st.session_state
    ui_state.init_state(ss)
    try:
        store = RunStore()
        for notice in store.pop_notices():  # e.g. "the run database was damaged: rebuilt it from N run folders"
            st.toast(notice, icon=":material/build:")
        ws_id, note = workspace.attach(store, ss, st.query_params.get("ws"))
        if st.query_params.get("ws") != ws_id:
            st.query_params["ws"] = ws_id  # the URL is the key: reload, bookmark and a second tab find it
        workspaces.sync_state(store, ws_id, ss, workspace.PERSISTED, phase="in")
    except (OSError, sqlite3.Error) as exc:  # a full disk: one line naming the folder and the fix
        if not is_disk_full(exc):
            raise
        st.error(str(exc if isinstance(exc, UserError) else disk_full_from(exc, default_runs_dir(), None, "the run store")))
        st.stop()
    if note:
        st.toast(note, icon=":material/info:")
    page = st.navigation(
        [
            st.Page(PAGES / name, title=title, icon=icon, default=(name == "home.py"))
            for name, title, icon in MENU
            if (PAGES / name).is_file()
        ]
    )
    sidebar(store, ws_id)
    if "_deep_link" in ss:  # a page was opened before the router ran: go back to it
        st.switch_page(ss.pop("_deep_link"), query_params={**st.query_params.to_dict(), "ws": ws_id})  # a switch drops the URL's query
    try:
        page.run()
    finally:  # also when the page calls st.rerun() or st.stop(): what it changed is kept
        try:
            workspaces.sync_state(store, ws_id, ss, workspace.PERSISTED, phase="out")
        except (OSError, sqlite3.Error) as exc:  # a full disk: the choices are kept in the session meanwhile
            if not is_disk_full(exc):
                raise


if __name__ == "__main__":
    run()
