"""Label issues: which images are probably mislabelled, and how much data is enough.

Widgets in, one core call (``tl_dashboard.label_issues`` / ``curation`` / ``data_curve``), results out.
Relabel moves a file to another class folder (logged, undoable); exclude adds it to the data set's
``.tl-exclude.json``. Nothing is ever deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from tl_dashboard import curation, importer
from tl_dashboard import ui_state as ui
from tl_dashboard.errors import UserError
from tl_dashboard.label_issues import find_label_issues
from views import review, widgets

ss = st.session_state
ui.require_router(ss, "pages/labels.py", st.switch_page, st.query_params.to_dict())


def editable(folder: str) -> str | None:
    """Why this folder may not be changed here, or None when it may."""
    try:
        importer.resolve_allowed_path(folder)
    except UserError as exc:  # PathNotAllowed on a shared server
        return str(exc)
    shared = bool(os.environ.get("TL_ALLOWED_ROOTS"))
    if shared and Path(folder).resolve() == ui.sample_data_dir().resolve():
        return "The bundled sample set is shared by everyone on this server: review a copy (Data page) to change labels."
    return None


def act(kind: str, path: str, target: str = "") -> None:
    root = ss.li_report["data_dir"]
    with widgets.reported("Not changed", page="li"):
        if kind == "relabel":
            move = curation.relabel(root, path, target)
            ss.li_done[path] = f"moved to {target}"
            widgets.flash("li", "success", f"Moved {Path(path).name} to {target} (undo below).")
            ss.li_last_move = move["id"]
        else:
            curation.exclude(root, [path], reason="label review")
            ss.li_done[path] = "excluded"
            widgets.flash("li", "success", f"Excluded {Path(path).name}: training skips it from now on (take it back below).")


def undo(move_id: str) -> None:
    with widgets.reported("Not undone", page="li"):
        entry = curation.undo_relabel(ss.li_report["data_dir"], move_id)
        widgets.flash("li", "success", f"Moved {Path(entry['to']).name} back to {entry['from']}.")


def include(rel: str) -> None:
    curation.include(ss.li_report["data_dir"], [rel])
    widgets.flash("li", "success", f"{rel} is used for training again.")


def show_suspects(report: dict, why_not: str | None) -> None:
    done = ss.setdefault("li_done", {})
    rows = report["suspects"]
    st.caption(
        f"{report['images']} images ranked; {report['flagged']} flagged by confident learning "
        f"(out-of-sample accuracy {report['oos_accuracy']:.1%}, {report['folds']}-fold logistic regression on "
        f"{report['model']} features). Most suspicious first. Caption: given label -> predicted (its probability)."
    )
    limit = st.slider(
        "Show",
        5,
        max(5, min(100, report["images"])),
        min(20, max(5, report["images"])),
        step=5,
        key="li_show",
        help="the top of the ranking, flagged or not",
    )
    for i, r in enumerate(rows[:limit]):
        c0, c1, c2, c3, c4 = st.columns([1, 3, 2, 1, 1], vertical_alignment="center")
        if Path(r["path"]).is_file():  # a relabelled file has moved
            c0.image(r["path"], width=80)
        c1.markdown(
            f"**{r['given']}** -> {r['predicted']} ({r['confidence']:.0%})  \n"
            f"`{Path(r['path']).parent.name}/{Path(r['path']).name}` · {r['split']} · "
            f"p(given) {r['given_prob']:.0%}" + (" · flagged" if r["flagged"] else "")
        )
        if r["path"] in done:
            c2.caption(done[r["path"]])
            continue
        others = [c for c in report["classes"] if c != r["given"]]
        target = c2.selectbox(
            "Move to",
            others,
            index=others.index(r["predicted"]) if r["predicted"] in others else 0,
            key=f"li_to_{i}",
            label_visibility="collapsed",
        )
        c3.button(
            "Relabel",
            key=f"li_relabel_{i}",
            on_click=act,
            args=("relabel", r["path"], target),
            disabled=bool(why_not),
            help=why_not or f"move the file into the {target} folder (undoable)",
        )
        c4.button(
            "Exclude",
            key=f"li_exclude_{i}",
            on_click=act,
            args=("exclude", r["path"]),
            disabled=bool(why_not),
            help=why_not or "leave the file where it is; training skips it",
        )


def show_history(root: str) -> None:
    moves = [m for m in curation.relabel_log(root) if not m.get("undone")]
    excluded = curation.excluded_paths(root)
    if not moves and not excluded:
        return
    with st.expander(f"Changes to this data set: {len(moves)} relabelled, {len(excluded)} excluded", expanded=True):
        for m in reversed(moves):
            a, b = st.columns([4, 1])
            a.markdown(f"`{m['from']}` -> `{m['to']}`")
            b.button("Undo", key=f"li_undo_{m['id']}", on_click=undo, args=(m["id"],))
        for rel in excluded:
            a, b = st.columns([4, 1])
            a.markdown(f"excluded `{rel}`")
            b.button("Include", key=f"li_inc_{rel}", on_click=include, args=(rel,))


st.title("Label issues")
config = ui.config_from_state(ss)
st.caption(f"Data: `{config.data_dir}` · backbone `{config.model}` (frozen features). Change them on the Data and Model pages.")
tab_issues, tab_curve = st.tabs(["Label issues", "How much data do I need?"])
with tab_issues:
    why_not = editable(config.data_dir)
    if st.button("Find label issues", type="primary", key="li_go"):
        with (
            st.spinner("Computing frozen features (one pass over the images) and out-of-sample predictions..."),
            widgets.reported("No label review"),
        ):
            ss.li_report = find_label_issues(config).to_dict(top=100000)
            ss.li_done = {}
    widgets.show_flash("li")
    report = ss.get("li_report")
    if report and report["data_dir"] == str(Path(config.data_dir)):
        if why_not:
            st.info(why_not)
        show_suspects(report, why_not)
        show_history(report["data_dir"])
        st.caption(f"From a terminal: `tl-dashboard label-issues {config.data_dir} --json`")
    else:
        st.info(
            "Ranks every image (train and validation) by how likely its label is wrong, from predictions of "
            "a model that never saw it. Relabel moves the file to another class folder (undoable); exclude "
            "keeps it on disk but out of training. Nothing is deleted."
        )
with tab_curve:
    review.data_curve_panel(config)
    st.caption(f"From a terminal: `tl-dashboard data-curve {config.data_dir} --json` (add `--plans head,none,scratch` for trained curves).")
