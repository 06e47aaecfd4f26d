"""Evaluate, explain, predict and export a finished run: one import for the pages and the CLI.

Everything works from a run's folder (``model.safetensors``, ``labels.json``,
``preprocessing.json``, ``config.json``) and sees images exactly as training did. The work lives in
four modules; this one gathers their public names:

* :mod:`~tl_dashboard.inference` - :func:`load_run` (a run's model, classes and preprocessing),
  :func:`list_evaluable_runs`, preprocessing as in training;
* :mod:`~tl_dashboard.metrics` - :func:`evaluate_run` (predictions on the run's validation split,
  rebuilt from its data folder, seed and ``val_fraction``), :func:`classification_report`,
  :func:`confusion_matrix` (rows = true class), the misclassified images worst first;
* :mod:`~tl_dashboard.explain` - :func:`predict_images` (top-k with a Grad-CAM map per image),
  :func:`grad_cam` / :func:`overlay_heatmap`, :func:`embeddings` (2-D PCA before/after training);
* :mod:`~tl_dashboard.export` - :func:`export_run` (``safetensors``, ``torchscript``, ``onnx``, each
  checked against the model; its docstring shows how to load each file on its own).

Every function that takes a run takes a :class:`RunStore` with a ``run_id``, a run folder, or a
:class:`LoadedRun`: nothing here caches models, so a caller that reuses one keeps the ``LoadedRun``
(the Evaluate page does, in ``st.cache_resource``). Results are drawn by :mod:`tl_dashboard.charts`.
This module never imports streamlit.

Example:
    >>> store = RunStore("runs")
    >>> ev = evaluate_run(store, run_id)
    >>> round(ev.accuracy, 3), ev.confusion.tolist()
    (0.972, [[12, 0, 0], [1, 11, 0], [0, 0, 12]])
    >>> export_run(store, run_id, formats=("onnx",))["onnx"]
    PosixPath('runs/.../export/model.onnx')
"""

from __future__ import annotations

from .explain import Prediction, embeddings, grad_cam, overlay_heatmap, predict_each, predict_images
from .export import EXPORT_FORMATS, ONNX_OPSET, export_run
from .inference import EvaluateError, LoadedRun, list_evaluable_runs, load_run
from .metrics import Evaluation, classification_report, confusion_matrix, evaluate_run

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_OPSET",
    "EvaluateError",
    "LoadedRun",
    "Evaluation",
    "Prediction",
    "list_evaluable_runs",
    "load_run",
    "classification_report",
    "confusion_matrix",
    "evaluate_run",
    "predict_images",
    "predict_each",
    "grad_cam",
    "overlay_heatmap",
    "embeddings",
    "export_run",
]
