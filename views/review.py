"""Streamlit pieces for looking closer: confusion cells to images, camera predict, TTA, augmentation
preview, the data-efficiency curve. Each draws widgets, makes one core call and shows the result.

Used by pages/evaluate.py, pages/train.py and pages/labels.py; the core (``tl_dashboard``) never
imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from tl_dashboard import charts
from tl_dashboard import evaluate as ev
from tl_dashboard.metrics import cell_images
from views import widgets

__all__ = ["confusion_with_cells", "camera_predict", "tta_panel", "augmentation_panel", "data_curve_panel"]

MAX_CELL_IMAGES = 24


def _selected_cell(event: Any, classes: list[str]) -> tuple[int, int] | None:
    """(true, predicted) of the clicked cell: its marker's y (row) and x (column) class names."""
    points = (getattr(event, "selection", None) or {}).get("points") or []
    names = [str(c) for c in classes]
    for p in points:
        if p.get("y") in names and p.get("x") in names:
            return names.index(p["y"]), names.index(p["x"])
    return None


def confusion_with_cells(result: ev.Evaluation, container: Any = None) -> None:
    """The confusion matrix; a click on a cell lists that cell's images with their probabilities."""
    where = container or st
    fig = charts.confusion_figure(result.confusion, result.classes, selectable=True)
    event = widgets.plot(fig, f"ev_confusion_{result.run_id}", where, on_select="rerun", selection_mode="points")
    cell = _selected_cell(event, result.classes)
    if cell is None:
        where.caption("Click a cell to see its images.")
        return
    true, pred = cell
    rows = cell_images(result, true, pred)
    kind = "correct" if true == pred else "mistakes"
    st.markdown(
        f"**True {result.classes[true]}, predicted {result.classes[pred]}**: "
        f"{len(rows)} image{'s' if len(rows) != 1 else ''} ({kind}), least sure first"
    )
    if not rows:
        st.info("No validation image falls in this cell.")
        return
    cols = st.columns(6)
    for i, r in enumerate(rows[:MAX_CELL_IMAGES]):
        with cols[i % 6]:
            st.image(
                r["path"],
                caption=f"{Path(r['path']).name} · p({r['pred_name']}) {r['confidence']:.0%}"
                + ("" if true == pred else f" · p({r['true_name']}) {r['true_prob']:.0%}"),
            )
    if len(rows) > MAX_CELL_IMAGES:
        st.caption(f"Showing {MAX_CELL_IMAGES} of {len(rows)}.")


def camera_predict(loaded: ev.LoadedRun, top_k: int) -> None:
    """A photo from the camera through the run: top-k and Grad-CAM. The photo stays in memory only."""
    st.caption("The photo goes through the model in this server's memory and is never written to disk.")
    shot = st.camera_input("Take a photo", key=f"ev_camera_{loaded.run_id}")
    if shot is None:
        return
    preds = []
    with widgets.reported("Cannot classify the photo"):  # not cached: a camera frame is used once
        preds = ev.predict_images(loaded, [shot.getvalue()], top_k)
    if not preds:
        return
    p = preds[0]
    left, right = st.columns(2)
    widgets.plot(charts.topk_figure(p, title=f"Camera photo: top-{len(p.top)}"), "ev_camera_topk", left)
    right.image(ev.overlay_heatmap(p.image, p.cam), caption=f"Grad-CAM for '{p.top[0][0]}': red = where the evidence for it is strongest")


@st.cache_data(show_spinner="Scoring the validation set with test-time augmentation (10 views per image)...", max_entries=8)
def _tta_result(root: str, run_id: str) -> dict:
    from tl_dashboard.runs import RunStore
    from tl_dashboard.tta import evaluate_tta

    return evaluate_tta(RunStore(root), run_id)


def tta_panel(root: str, run_id: str) -> None:
    """Validation accuracy without and with test-time augmentation, and the images it changes."""
    st.caption(
        "Test-time augmentation averages the model's probabilities over 10 views of each image "
        "(centre and 4 corner crops, each also mirrored): 10x the compute per image."
    )
    if not st.toggle("Compare with test-time augmentation", key=f"ev_tta_{run_id}"):
        return
    res = None
    with widgets.reported("No test-time augmentation"):
        res = _tta_result(root, run_id)
    if res is None:
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Without TTA", f"{res['accuracy']:.1%}")
    c2.metric("With TTA", f"{res['accuracy_tta']:.1%}", delta=f"{(res['accuracy_tta'] - res['accuracy']) * 100:+.1f} pts")
    c3.metric("Images changed", len(res["changed"]), help=f"{res['fixed']} fixed, {res['broken']} broken by TTA")
    if res["changed"]:
        st.dataframe(
            [
                {
                    "image": Path(r["path"]).name,
                    "true": r["true"],
                    "without TTA": f"{r['plain']} ({r['plain_prob']:.0%})",
                    "with TTA": f"{r['tta']} ({r['tta_prob']:.0%})",
                }
                for r in res["changed"]
            ],
            hide_index=True,
            key=f"ev_tta_table_{run_id}",
        )


def tta_predictions(loaded: ev.LoadedRun, images: list, names: list[str], top_k: int) -> None:
    """Top-k of the given images without and with TTA, side by side."""
    from tl_dashboard.tta import predict_tta

    rows = []
    with widgets.reported("No test-time augmentation"):
        rows = predict_tta(loaded, images, top_k)
    for i, (name, r) in enumerate(zip(names, rows)):
        left, right = st.columns(2)
        widgets.plot(charts.topk_figure(r["top_k_plain"], title=f"{name}: without TTA"), f"ev_tta_plain_{i}", left)
        widgets.plot(charts.topk_figure(r["top_k"], title=f"{name}: with TTA (10 views)"), f"ev_tta_{i}", right)


@st.cache_data(show_spinner="Drawing augmented views...", max_entries=16)
def _preview(config_json: str, seed: int) -> list[dict]:
    import json

    from tl_dashboard.augment_preview import augmentation_preview
    from tl_dashboard.engine import TrainConfig

    return augmentation_preview(TrainConfig.from_dict(json.loads(config_json)), images=4, views=4, seed=seed)


def augmentation_panel(config: Any) -> None:
    """A few training images as the network will see them with this config's augmentation."""
    import json

    if not st.toggle(
        "Preview what the network sees",
        key="aug_preview_on",
        help="a few training images as this augmentation setting shows them to the network",
    ):
        return
    with st.container(border=True):
        if not config.augment:
            st.caption(
                "Augmentation is off: every epoch the network sees the same centre crop (left column). "
                "Turn it on to see random crops, flips and colour changes."
            )
        else:
            st.caption(
                "Each row: the validation view (centre crop), then 4 random training views "
                "(random resized crop, horizontal flip, colour jitter), before normalisation."
            )
        seed = int(st.session_state.get("aug_preview_seed", 0))
        if config.augment and st.button("Draw again", key="aug_preview_again"):
            seed = st.session_state["aug_preview_seed"] = seed + 1
        keep = ("data_dir", "model", "image_size", "augment", "val_fraction", "seed")
        rows = []
        with widgets.reported("No preview"):
            rows = _preview(json.dumps({k: getattr(config, k) for k in keep}, sort_keys=True), seed)
        for r in rows:
            cols = st.columns(5)
            cols[0].image(r["original"], caption=f"{r['label']} (centre crop)")
            for c, v in zip(cols[1:], r["views"] if config.augment else []):
                c.image(v)


def data_curve_panel(config: Any) -> None:
    """Validation accuracy against images per class: linear probe by default, trained plans on request."""
    from tl_dashboard.data_curve import data_curve

    st.caption(
        "For each size, that many training images per class are drawn at random (several draws), a model "
        "is trained on them alone and scored on the whole validation split. The linear probe (a logistic "
        "regression on the frozen backbone's features) costs about one pass over the images."
    )
    c1, c2 = st.columns(2)
    draws = c1.slider("Draws per size", 1, 10, 5, key="curve_draws")
    plans = c2.multiselect(
        "Also train real runs (slow: sizes x 2 runs each)",
        ["none", "scratch"],
        default=[],
        format_func={"none": "fine-tune everything", "scratch": "from scratch"}.get,
        key="curve_plans",
    )
    key = ("curve", config.data_dir, config.model, config.image_size, draws, tuple(plans))
    if st.button("Draw the curve", type="primary", key="curve_go"):
        with st.status("Drawing the data-efficiency curve...", expanded=False) as status:
            with widgets.reported("No curve"):
                st.session_state["curve_result"] = (
                    key,
                    data_curve(config, draws=draws, plans=["head", *plans], progress=status.write).to_dict(),
                )
            status.update(state="complete")
    got = st.session_state.get("curve_result")
    if not got or got[0][:4] != key[:4]:
        return
    curve = got[1]
    widgets.plot(charts.data_curve_figure(curve["points"]), "curve_chart")
    secs = curve["seconds"]
    st.caption(
        f"{curve['val_images']} validation images. Time: features {secs.get('features', 0):.1f} s, "
        f"linear-probe curve {secs.get('head', 0):.1f} s in all"
        + "".join(f", {p} {s:.0f} s" for p, s in secs.items() if p not in ("features", "head"))
        + "."
    )
