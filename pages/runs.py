"""Runs: every run in the store; open one for its curves, config and log; delete on purpose only."""

import streamlit as st

from tl_dashboard import liveview, workspaces
from tl_dashboard import ui_state as ui
from tl_dashboard.formatting import config_view
from tl_dashboard.resume import can_resume, resume_run, why_not_resumable
from tl_dashboard.runs import ACTIVE_STATUSES, RunStore
from tl_dashboard.worker import reap
from views import present, widgets, workspace

ss = st.session_state
ui.require_router(ss, "pages/runs.py", st.switch_page, st.query_params.to_dict())
store = RunStore()
ws_id, admin_pw = workspace.me(ss)
reap(store)
any_active = bool(store.list_runs(ACTIVE_STATUSES))


def delete(run_id: str) -> None:
    with widgets.reported("Not deleted", page="runs"):  # checked in the core: your own runs only, or the teacher
        workspaces.delete_run(store, run_id, ws_id, admin_pw)
        widgets.flash("runs", "success", f"Deleted run {run_id} and its files.")
        if ss.get("run_id") == run_id:
            ss.run_id = None


def resume(run_id: str) -> None:
    with widgets.reported("Not resumed", page="runs"):
        resume_run(store, run_id)
        widgets.flash("runs", "success", f"Run {run_id} is queued again; it continues from its last completed epoch.")


def stop(run_id: str) -> None:
    with widgets.reported("Not stopped", page="runs"):
        workspaces.stop_run(store, run_id, ws_id, admin_pw)


st.title("Runs")
st.caption(
    f"Everyone's runs in the store at `{store.root.resolve()}`, newest first. Other people's runs are "
    "read-only; yours can be stopped and deleted."
)
st.segmented_control(
    "Show",
    ["everyone", "mine"],
    format_func={"everyone": "Everyone's runs", "mine": "My runs"}.get,
    key="runs_whose",
    default="everyone",
    required=True,
)
widgets.show_flash("runs")


@widgets.live_fragment(any_active)
def runs_view() -> bool:
    runs = workspaces.list_runs(store, ws_id, mine=ss.get("runs_whose") == "mine")
    if not runs:
        st.info(
            "No runs yet. Start one on the Train page."
            if ss.get("runs_whose") != "mine"
            else "You have no runs yet. Start one on the Train page."
        )
        st.page_link("pages/train.py", label="Go to Train", icon=":material/play_circle:")
        return False
    st.dataframe(
        present.run_rows(runs, me=ws_id, names=workspaces.names(store)),
        hide_index=True,
        key="runs_table",
        column_config={
            "id": st.column_config.TextColumn("run id"),
            "trainable params": st.column_config.NumberColumn("params", format="compact", help="trainable parameters"),
            "best val acc": st.column_config.ProgressColumn(
                "best val", min_value=0, max_value=100, format="%.1f %%", help="best validation accuracy"
            ),
            "95% interval": st.column_config.TextColumn(
                "95% CI", help="95% Wilson interval of the best val accuracy, and the number of validation images"
            ),
        },
    )
    by_id = {r["id"]: r for r in runs}
    if ss.get("runs_pick") not in by_id:
        ss["runs_pick"] = ss.get("run_id") if ss.get("run_id") in by_id else runs[0]["id"]
    run_id = st.selectbox("Open a run", list(by_id), key="runs_pick", format_func=lambda i: present.run_title(by_id[i], accuracy=True))
    run = by_id[run_id]
    kind, text = present.status_message(run)
    getattr(st, kind)(text)
    view = liveview.run_view(store, run_id, max_age=widgets.view_age())  # shared by everyone watching it
    if view is None:
        st.info("This run was deleted.")
        return True
    steps, epochs = view.steps, view.epochs
    live = run["status"] in ACTIVE_STATUSES
    if steps or epochs or live:
        widgets.curves(steps, epochs, view.run, key="runs", live=live, memo=view.memo)
    else:
        st.caption("This run recorded no training steps, so there are no curves to show.")
    note = present.feature_cache_note(run["summary"])
    if note:
        st.caption(note)
    t1, t2, t3 = st.tabs(["Config", "Summary", "Log"])
    t1.json(config_view(run["config"], run["summary"]))  # 0 sentinels read "auto" / "off"
    t2.json({k: v for k, v in run["summary"].items() if k not in ("blocks", "skipped_files")}, expanded=False)
    t3.code(present.log_text(view.logs), language=None)

    st.markdown("**Manage**")
    if not workspaces.can_manage(run, ws_id, admin_pw):
        st.caption(
            "Read-only: this run belongs to someone else"
            + ("" if run.get("workspace") else " (it was made before workspaces, or by the command line)")
            + ". Only its owner or the teacher "
            "can stop or delete it."
        )
    elif run["status"] in ACTIVE_STATUSES:
        st.button("Stop this run", key="runs_stop", icon=":material/stop:", on_click=stop, args=(run_id,))
        st.caption("A run that is queued or training cannot be deleted; stop it first.")
    else:
        if can_resume(store, run_id):
            st.button(
                "Resume",
                key="runs_resume",
                icon=":material/resume:",
                on_click=resume,
                args=(run_id,),
                help="Continue from the last completed epoch with the optimizer and schedule state, "
                "under the same run id, up to the planned number of epochs.",
            )
        elif why_not_resumable(store, run_id):
            st.caption(why_not_resumable(store, run_id))
        sure = st.checkbox(f"Yes, delete run {run_id} with its checkpoint and metrics", key=f"runs_confirm_{run_id}")
        st.button("Delete run", key="runs_delete", icon=":material/delete:", disabled=not sure, on_click=delete, args=(run_id,))
    return any(r["status"] in ACTIVE_STATUSES for r in runs)


runs_view()
