"""Evaluate: what a trained model gets wrong and why, try it on new images, take it away.

Widgets in, one core call (``tl_dashboard.evaluate``), figures out. Heavy results are cached per
runs folder and run id; the Predict, Embeddings and Export tabs compute only when opened.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_dashboard import charts, stats
from tl_dashboard import evaluate as ev
from tl_dashboard import ui_state as ui
from tl_dashboard.runs import RunStore
from views import present, review, widgets

ss = st.session_state
ui.require_router(ss, "pages/evaluate.py", st.switch_page, st.query_params.to_dict())

MAX_GALLERY = 24


@st.cache_resource(show_spinner="Loading the run's model...", max_entries=4)
def loaded_run(root: str, run_id: str) -> ev.LoadedRun:
    """The one cache of models: every session evaluating this run shares it (read-only)."""
    return ev.load_run(RunStore(root), run_id)


@st.cache_data(show_spinner="Evaluating the model on its validation set...", max_entries=8)
def evaluation(root: str, run_id: str) -> ev.Evaluation:
    return ev.evaluate_run(loaded_run(root, run_id))


@st.cache_data(show_spinner="Predicting...", max_entries=32)
def predictions(root: str, run_id: str, images: tuple, names: tuple, top_k: int) -> tuple[list[ev.Prediction], list[dict]]:
    return ev.predict_each(loaded_run(root, run_id), list(images), list(names), top_k)


@st.cache_data(show_spinner="Computing features before and after training...", max_entries=8)
def embedding_view(root: str, run_id: str) -> dict:
    return ev.embeddings(loaded_run(root, run_id))


def show_metrics(result: ev.Evaluation) -> None:
    config = {
        k: st.column_config.NumberColumn(label, format="%.2f")
        for k, label in (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))
    }
    config["class"] = st.column_config.TextColumn("Class")
    config["support"] = st.column_config.NumberColumn("Images", help="validation images of this class")
    st.dataframe(result.report, hide_index=True, key="ev_report", column_config=config)
    per_class = charts.per_class_figure(result.report)
    if len(result.classes) <= 6:  # side by side while the cells stay readable
        left, right = st.columns(2)
        widgets.plot(per_class, "ev_per_class", left)
        review.confusion_with_cells(result, right)  # a click on a cell lists its images below
    else:
        widgets.plot(per_class, "ev_per_class")
        review.confusion_with_cells(result)


def show_mistakes(result: ev.Evaluation) -> None:
    wrong = result.misclassified
    if not wrong:
        st.success("Every validation image is classified correctly.")
        return
    st.caption(
        f"{len(wrong)} misclassified validation images, worst first (highest loss). "
        "Caption: true class -> predicted class (its probability) · probability given to the true class; "
        "the lower that last number, the worse the mistake."
    )
    shown = wrong[:MAX_GALLERY]
    cols = st.columns(4)
    for i, m in enumerate(shown):
        with cols[i % 4]:
            st.image(m["path"], caption=f"{m['true_name']} -> {m['pred_name']} ({m['confidence']:.0%}) · p(true) {m['true_prob']:.0%}")
    if len(wrong) > len(shown):
        st.caption(f"Showing the worst {len(shown)} of {len(wrong)}.")


def show_predict(root: str, run_id: str, result: ev.Evaluation | None, n_classes: int) -> None:
    sources = ["Upload images", "Camera", "A validation image"] if result else ["Upload images", "Camera"]
    source = st.radio("Images", sources, horizontal=True, key="ev_source", index=len(sources) - 1 if result else 0)
    images: list = []
    if source == "Upload images":
        files = st.file_uploader("Images to classify", type=widgets.IMAGE_TYPES, accept_multiple_files=True, key="ev_upload")
        images = [f.getvalue() for f in files or []]
        names = [f.name for f in files or []]
    elif source == "Camera":
        names = []
    else:
        wrong = {m["path"] for m in result.misclassified}
        order = [m["path"] for m in result.misclassified] + [p for p in result.paths if p not in wrong]
        path = st.selectbox(
            "Validation image (misclassified ones first)",
            order,
            key=f"ev_val_image_{run_id}",
            format_func=lambda p: f"{Path(p).parent.name}/{Path(p).name}" + ("  (misclassified)" if p in wrong else ""),
        )
        images, names = [path], [Path(path).name]
    top_k = st.slider("Top-k classes", 1, n_classes, min(3, n_classes), key="ev_topk")
    if source == "Camera":  # the photo stays in memory: predicted once, never cached or saved
        review.camera_predict(loaded_run(root, run_id), top_k)
        return
    if not images:
        st.info("Upload one or more images to see the model's top classes and where it looked.")
        return
    preds, failures = [], []
    with widgets.reported("Cannot classify these images"):
        preds, failures = predictions(root, run_id, tuple(images), tuple(names), top_k)
    for f in failures:
        st.error(f["reason"] + " The other images are classified below.")
    for i, p in enumerate(preds):
        name = p.name
        left, right = st.columns(2)
        with left:
            widgets.plot(charts.topk_figure(p, title=f"{name}: top-{len(p.top)}"), f"ev_topk_{i}")
        with right:
            st.image(
                ev.overlay_heatmap(p.image, p.cam), caption=f"Grad-CAM for '{p.top[0][0]}': red = where the evidence for it is strongest"
            )
    if st.toggle("Also with test-time augmentation (flips and crops averaged)", key="ev_predict_tta"):
        review.tta_predictions(loaded_run(root, run_id), images, names, top_k)


def show_embeddings(root: str, run_id: str) -> None:
    st.caption(
        "Each dot is a validation image: its penultimate-layer features projected to 2-D with PCA. "
        "Left: the pretrained backbone before training; right: the trained model."
    )
    emb = None
    with widgets.reported("Cannot compute the embeddings"):
        emb = embedding_view(root, run_id)
    if emb is None:
        return
    for note in emb["notes"]:
        st.info(note)
    hover = [Path(p).name for p in emb["paths"]]
    cols = st.columns(2)
    for col, key in zip(cols, ("before", "after")):
        view = emb[key]
        with col:
            widgets.plot(
                charts.embedding_figure(view["points"], emb["labels"], emb["classes"], view["title"], view["explained"], hover),
                f"ev_emb_{key}",
            )


def show_export(root: str, run_id: str) -> None:
    formats = st.multiselect("Formats", list(ev.EXPORT_FORMATS), default=list(ev.EXPORT_FORMATS), key="ev_formats")
    st.caption(
        "Each file loads on its own (TorchScript in torch, ONNX in onnxruntime, safetensors with timm), "
        "with labels.json and preprocessing.json beside it. From a terminal: "
        f"`tl-dashboard export {run_id} --format {','.join(formats or ev.EXPORT_FORMATS)}`"
    )
    exports = st.session_state.setdefault("ev_exports", {})
    if st.button("Export", type="primary", disabled=not formats, key="ev_export"):
        with st.spinner("Exporting and checking each file against the model..."), widgets.reported("Not exported"):
            exports[run_id] = {k: str(v) for k, v in ev.export_run(loaded_run(root, run_id), formats=formats).items()}
    files = exports.get(run_id)
    if files:
        st.success(f"Exported to {Path(next(iter(files.values()))).parent}")
        for key, path in files.items():
            p = Path(path)
            if p.is_file():
                size = p.stat().st_size
                st.download_button(
                    f"Download {p.name} ({size / 2**20:.1f} MB)"
                    if size >= 2**20
                    else f"Download {p.name} ({max(1, round(size / 1024))} KB)",
                    lambda p=p: p.read_bytes(),  # read on click, not on every rerun
                    file_name=p.name,
                    key=f"ev_dl_{key}",
                    on_click="ignore",
                )


st.title("Evaluate")
store = RunStore()
runs = ev.list_evaluable_runs(store)
if not runs:
    st.info(
        f"No finished runs yet in `{store.root}`. Train a model on the **Train** page; finished and "
        "stopped runs appear here to evaluate, explain and export."
    )
    st.stop()

labels = {r["id"]: present.run_title(r, accuracy=True) for r in runs}
ids = list(labels)
start = ids.index(ss.get("run_id")) if ss.get("run_id") in labels else 0  # this session's last run, else the newest
run_id = st.selectbox("Run (newest first)", ids, index=start, format_func=labels.get, key="ev_run")
root = str(store.root.resolve())
n_classes = len((next(r for r in runs if r["id"] == run_id).get("summary") or {}).get("classes") or []) or 2

result: ev.Evaluation | None = None
with widgets.reported("Cannot evaluate this run on its validation set"):
    result = evaluation(root, run_id)

if result is not None:
    n_classes = len(result.classes)
    c1, c2, c3, c4 = st.columns(4)
    n_val = len(result.paths)
    lo, hi = stats.wilson_interval(round(result.accuracy * n_val), n_val)
    c1.metric(
        "Validation accuracy",
        f"{result.accuracy:.1%}",
        help="95% Wilson score interval: where the accuracy on new images of the same kind likely lies, "
        "given only this many validation images.",
    )
    c1.caption(f"95% interval {lo:.0%}-{hi:.0%} · n={n_val}")
    c2.metric("Macro F1", f"{result.macro_f1:.2f}")
    c3.metric("Validation images", len(result.paths))
    c4.metric("Misclassified", len(result.misclassified))
    for note in result.notes:
        st.warning(note)


def metrics_tab() -> None:
    if result:
        show_metrics(result)
        review.tta_panel(root, run_id)
    else:
        st.info("Metrics need the run's validation set (see the error above).")


# Each tab computes only when it is open (the Predict, Embeddings and Export work is heavy).
TABS = {
    "Metrics": metrics_tab,
    "Mistakes": lambda: show_mistakes(result) if result else st.info("The gallery needs the run's validation set."),
    "Predict": lambda: show_predict(root, run_id, result, n_classes),
    "Embeddings": lambda: show_embeddings(root, run_id),
    "Export": lambda: show_export(root, run_id),
}
for tab, draw in zip(st.tabs(list(TABS), key="ev_tab", on_change="rerun"), TABS.values()):
    if tab.open:
        with tab:
            draw()
