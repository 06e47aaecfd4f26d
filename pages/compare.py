"""Compare: runs side by side, freeze-depth sweeps, and what each layer learned."""

from pathlib import Path

import pandas as pd
import streamlit as st

from tl_dashboard import charts, compare, stats, workspaces
from tl_dashboard import formatting as fmt
from tl_dashboard import ui_state as ui
from tl_dashboard.runs import ACTIVE_STATUSES, RunStore
from tl_dashboard.worker import reap
from views import present, widgets

ss = st.session_state
ui.require_router(ss, "pages/compare.py", st.switch_page, st.query_params.to_dict())
store = RunStore()
reap(store)
DIFF_STYLE = "background-color: rgba(242, 142, 43, 0.22); font-weight: 600"


@st.cache_data(show_spinner="Rebuilding the starting weights and comparing them with the trained ones…", max_entries=16)
def drift_of(root: str, run_id: str, finished: float | None) -> list[dict]:
    return compare.weight_drift(RunStore(root), run_id)


# Choices live under plain keys; their widgets under w_<key> (ui_state.bind), so they survive page changes.


def pick_sweep_runs(ids: list[str]) -> None:
    ss.cmp_runs = ids


st.title("Compare runs")
st.caption(
    "Finished and stopped runs from the store, side by side: curves on the same axes, settings in one "
    "table, the freeze-depth sweeps, and how far each block moved from its pretrained weights."
)

whose = st.segmented_control(
    "Runs of",
    ["everyone", "mine"],
    key="cmp_whose",
    default="everyone",
    required=True,
    format_func={"everyone": "everyone (read-only)", "mine": "mine"}.get,
)
done = workspaces.list_runs(store, ss.get("ws_id"), mine=whose == "mine", status=("finished", "stopped"))
by_id = {r["id"]: r for r in done}
sweeps = compare.list_sweeps(store)

if not done and not sweeps:
    st.info(
        "No finished runs yet. Train one on the **Train** page (or queue a freeze-depth sweep on the "
        "**Learn** page); once two or more have finished, their curves and settings line up here."
    )
    st.page_link("pages/train.py", label="Go to Train", icon=":material/play_circle:")
    st.page_link("pages/learn.py", label="Go to Learn", icon=":material/school:")
    st.stop()

# -- runs side by side ---------------------------------------------------------------------------
st.header("Runs side by side")
if "cmp_runs" not in ss:
    ss.cmp_runs = list(by_id)[:2]
ss.cmp_runs = [i for i in ss.cmp_runs if i in by_id]  # drop deleted runs before the widget sees them
picked = st.multiselect(
    "Runs to compare",
    list(by_id),
    format_func=lambda i: present.run_title(by_id[i]),
    placeholder="Pick two or more runs",
    help="Newest first. Only finished and stopped runs.",
    **ui.bind(ss, "cmp_runs"),
)
if not by_id:
    st.info("No finished runs yet: the sweep below is still training. Its runs appear here as they finish.")
elif not picked:
    st.info("Pick two or more runs above to overlay their curves and line up their settings.")
else:
    if len(picked) == 1:
        st.caption("One run picked: add another to compare.")
    rows = compare.overlay_rows(store, picked)
    names = compare.run_labels([by_id[i] for i in picked])  # every picked run in the legend, even without points
    c1, c2 = st.columns(2)
    widgets.plot(charts.overlay_figure(rows, "loss", runs=names), "cmp_loss", c1)
    widgets.plot(charts.overlay_figure(rows, "accuracy", runs=names), "cmp_accuracy", c2)
    st.caption(
        "Overfitting shows as a gap that opens between the dotted (train) and solid (validation) line of one "
        "colour: train loss keeps falling while validation loss stops falling or rises."
    )

    table = compare.compare_table([by_id[i] for i in picked], {i: store.epochs(i) for i in picked})
    timing = next((r for r in table if r.get("field") == "timing"), None)  # a sentence: below, where it can wrap
    table = [r for r in table if r.get("field") != "timing"]
    only_diff = st.toggle("Show only the rows that differ", key="cmp_only_diff")
    shown = [r for r in table if r["differs"]] if only_diff else table
    df = pd.DataFrame([{"≠": "≠" if r["differs"] else "", **{k: v for k, v in r.items() if k != "differs"}} for r in shown])
    if df.empty:
        st.caption("These runs have the same settings and results.")
    else:
        flags = [r["differs"] for r in shown]
        styled = df.style.apply(lambda row: [DIFF_STYLE if flags[row.name] else ""] * len(row), axis=1)
        st.dataframe(
            styled,
            hide_index=True,
            key="cmp_table",
            height=35 * (len(df) + 1) + 3,
            column_config={
                "≠": st.column_config.TextColumn("≠", width=40, help="≠ = the runs differ in this row"),
                "field": st.column_config.TextColumn("setting / result"),
            },
        )
        n = sum(flags)
        st.caption(
            f"Highlighted with ≠: the {n} row(s) where the runs differ. Time per epoch is the mean of the "
            "measured epochs; total time includes loading data and weights and building the feature cache. "
            "Accuracies show their 95% (Wilson) interval and the number of validation images; the cost per "
            "epoch in GFLOPs does not depend on the machine, seconds do (see timing)."
        )
    if timing:
        st.caption("Timing: " + "; ".join(f"**{k}**: {v}" for k, v in timing.items() if k not in ("field", "differs")))
    note = compare.compare_overlap_note([by_id[i] for i in picked])
    if note:
        st.info(note, icon=":material/compare_arrows:")

# -- sweeps --------------------------------------------------------------------------------------
st.header("Sweeps: freeze depth against accuracy and time")
if not sweeps:
    st.info(
        "No sweeps yet. A sweep trains the same data once per freeze depth, from head only to full fine-tune. "
        "Queue one on the **Learn** page, or run `tl-dashboard sweep sample_data/emoji3 --depths 0,2,4,all`."
    )
    st.page_link("pages/learn.py", label="Go to Learn", icon=":material/school:")
else:
    sweep_by_id = {g["group_id"]: g for g in sweeps}

    def sweep_name(gid: str) -> str:
        g = sweep_by_id[gid]
        counts = ", ".join(f"{n} {s}" for s, n in g["counts"].items())
        return (
            f"{fmt.format_time(g['created'], short=True)} · {g['model']} on {Path(str(g['data_dir'])).name} · {g['runs']} runs ({counts})"
        )

    if ss.get("cmp_sweep") not in sweep_by_id:
        ss.cmp_sweep = sweeps[0]["group_id"]
    gid = st.selectbox("Sweep", list(sweep_by_id), format_func=sweep_name, **ui.bind(ss, "cmp_sweep"))

    @widgets.live_fragment(sweep_by_id[gid]["active"])
    def sweep_view(group_id: str) -> bool:
        points = compare.sweep_points(store, group_id)
        with_results = [p for p in points if p["best_val_accuracy"] is not None and p["trainable_params"]]
        if with_results:
            widgets.plot(charts.sweep_figure(points), "cmp_sweep_chart")
            note = stats.sweep_overlap_note(stats.group_repeats(points))
            if note:
                st.caption(note)
        else:
            st.info("No results in this sweep yet: its runs are queued or training. The points appear as they finish.")
        st.dataframe(
            [
                {
                    "run": p["label"],
                    "status": p["status"],
                    "freeze plan": p["freeze_label"],
                    "trainable params": p["trainable_params"],
                    "best val acc": None if p["best_val_accuracy"] is None else round(100 * p["best_val_accuracy"], 1),
                    "training time (s)": None if p["train_seconds"] is None else round(p["train_seconds"], 1),
                }
                for p in points
            ],
            hide_index=True,
            key="cmp_sweep_table",
            column_config={
                "trainable params": st.column_config.NumberColumn(format="compact"),
                "best val acc": st.column_config.NumberColumn(format="%.1f %%"),
            },
        )
        finished = [p["run_id"] for p in points if p["run_id"] in by_id]
        if st.button(
            "Compare these runs above",
            key="cmp_use_sweep",
            icon=":material/compare_arrows:",
            disabled=len(finished) < 2,
            on_click=pick_sweep_runs,
            args=(finished,),
        ):
            st.rerun(scope="app")  # the run picker lives outside this fragment
        st.caption(
            "Each point is one run of the same data, split and seed; only the freeze depth changes. Left: more "
            "trainable parameters can fit your data better, or overfit it. Right: what that costs in time."
        )
        return any(p["status"] in ACTIVE_STATUSES for p in points)

    sweep_view(gid)

# -- what each layer learned -----------------------------------------------------------------------
st.header("What each layer learned")
if not done:
    st.info("No finished run yet: the chart needs a trained checkpoint.")
else:
    if ss.get("cmp_drift_run") not in by_id:  # a partial fine-tune shows frozen and trainable blocks best
        partial = [i for i in (picked or list(by_id)) if str(by_id[i]["config"].get("freeze", "")).isdigit()]
        ss.cmp_drift_run = (partial or picked or list(by_id))[0]
    rid = st.selectbox("Run", list(by_id), format_func=lambda i: present.run_title(by_id[i]), **ui.bind(ss, "cmp_drift_run"))
    drift = None
    with widgets.reported("Cannot measure the weight drift of this run"):
        drift = drift_of(str(store.root), rid, by_id[rid].get("finished"))
    if drift is not None:
        scratch = by_id[rid]["config"].get("weights") == "none"
        widgets.plot(charts.drift_figure(drift, "random" if scratch else "pretrained"), "cmp_drift")
        moved = [r for r in drift if r["measure"] == "relative" and not r["frozen"]]
        top = max(moved, key=lambda r: r["drift"]) if moved else None
        line = (
            f"Each bar is how much a block's weights changed during training, relative to their "
            f"{'random starting' if scratch else 'pretrained'} values: frozen blocks (grey) stay exactly 0, "
            "trainable ones (orange) moved"
        )
        line += f", most in **{top['block']}** ({top['drift']:.2%})." if top else " (here only the head trained)."
        line += " The head started at zero, so its hatched bar is its absolute size (right axis)."
        if any(r["bn_drift"] is not None for r in drift):
            line += " Green diamonds: BatchNorm running statistics, which moved even in frozen blocks because BN mode was *train*."
        st.markdown(line)
