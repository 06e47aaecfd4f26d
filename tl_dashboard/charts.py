"""Pure chart functions: rows in, plotly Figure out. No Streamlit, no torch.

The one home for the dashboard's figures: data (class counts), model (blocks strip), training
curves (loss, accuracy), comparing runs (overlaid curves, freeze-depth sweep, weight drift) and
evaluation (confusion matrix, per-class scores, top-k, embeddings). The comparison figures
(sweep, weight drift, data curve, learning-rate finder) live in :mod:`charts_compare` and the
shared colours and layout in :mod:`charts_style`; both are re-exported here, so callers keep
``charts.sweep_figure``, ``charts.TRAIN`` and so on.

Colours are shared by every chart: frozen blocks are slate blue-grey, trainable ones orange;
train curves are blue, validation curves orange-red; BatchNorm statistics green. Runs and classes
take one colour each from :data:`PALETTE` (Tableau 10, the source of the colours above, then
Dark24), in order.

Example:
    >>> fig = class_counts_figure({"cats": {"train": 8, "val": 2}, "dogs": {"train": 6, "val": 2}})
    >>> [t.name for t in fig.data]
    ['train', 'val']
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from .charts_compare import data_curve_figure, drift_figure, lr_find_figure, sweep_figure
from .charts_style import _LEGEND_BELOW, BN_STATS, FROZEN, PALETTE, TRAIN, TRAINABLE, VAL, _layout
from .stats import best_epoch

if TYPE_CHECKING:  # charts only draw: no torch import at run time
    from .layers import Block

__all__ = [
    "PALETTE",
    "FROZEN",
    "TRAINABLE",
    "TRAIN",
    "VAL",
    "BN_STATS",
    "class_counts_figure",
    "blocks_strip_figure",
    "loss_figure",
    "accuracy_figure",
    "overlay_figure",
    "sweep_figure",
    "drift_figure",
    "lr_find_figure",
    "data_curve_figure",
    "confusion_figure",
    "per_class_figure",
    "topk_figure",
    "embedding_figure",
]


def class_counts_figure(counts: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Images per class, train and validation stacked.

    Args:
        counts: ``{class: {"train": n, "val": n}}`` (``DatasetSplit.counts()``).
    """
    classes = list(counts)
    fig = go.Figure()
    for split, colour, name in (("train", TRAIN, "train"), ("val", VAL, "val")):
        fig.add_bar(
            x=classes,
            y=[int(counts[c].get(split, 0)) for c in classes],
            name=name,
            marker_color=colour,
            hovertemplate="%{x}: %{y} " + name + " images<extra></extra>",
        )
    fig.update_layout(
        barmode="stack",
        title="Images per class",
        xaxis_title="class",
        yaxis_title="images",
        **_layout(legend={**_LEGEND_BELOW, "traceorder": "normal"}),
    )
    return fig


def blocks_strip_figure(blocks: Sequence[Block], frozen_names: Sequence[str]) -> go.Figure:
    """The network as bars in forward order: height = parameters, colour = frozen or trainable.

    Args:
        blocks: the model's blocks in forward order (``layers.describe_blocks``).
        frozen_names: names of the frozen blocks (the head is always trainable).
    """
    frozen = set(frozen_names)
    names = [b.name for b in blocks]
    params = [int(b.params or 0) for b in blocks]
    shape_txt = ["x".join(str(d) for d in b.output_shape) if b.output_shape else "?" for b in blocks]
    is_frozen = [b.name in frozen and b.kind != "head" for b in blocks]
    fig = go.Figure()
    for state, colour, label in ((True, FROZEN, "frozen"), (False, TRAINABLE, "trainable")):
        idx = [i for i, f in enumerate(is_frozen) if f == state]
        fig.add_bar(
            x=[names[i] for i in idx],
            y=[params[i] for i in idx],
            name=label,
            marker_color=colour,
            customdata=[[shape_txt[i], f"{params[i]:,}"] for i in idx],
            hovertemplate="%{x}: %{customdata[1]} params, output %{customdata[0]}<extra>" + label + "</extra>",
        )
    n_frozen = sum(p for p, f in zip(params, is_frozen) if f)
    total = max(1, sum(params))
    fig.update_layout(
        title=f"Blocks in forward order: {_share(n_frozen, total)} of the parameters frozen",
        xaxis=dict(title="block (input → output)", categoryorder="array", categoryarray=names),
        yaxis=dict(title="parameters (log scale)", type="log", dtick=1, tickformat="~s"),
        barmode="overlay",
        bargap=0.15,
        **_layout(),
    )
    return fig


def _share(part: int, total: int) -> str:
    """Percentage that never rounds a partial share to '0%' or '100%' (e.g. '99.9%')."""
    f = part / total
    if 0 < f < 0.01 or 0.99 < f < 1:
        return f"{min(max(f, 0.001), 0.999):.1%}"
    return f"{f:.0%}"


def _epoch_axis(n_epochs: int | None, n_rows: int) -> dict[str, Any]:
    """x axis in epochs; fixed to [0, n_epochs] when the run's length is known, so a live curve grows
    across a still axis instead of rescaling on every update."""
    axis: dict[str, Any] = {"title": "epoch", "rangemode": "tozero"}
    if n_epochs:
        axis["range"] = [0, n_epochs + 0.2]
    if (n_epochs or n_rows) <= 12:
        axis["dtick"] = 1
    return axis


def _unfreeze_marker(fig: go.Figure, unfreeze: Mapping[str, Any] | None) -> None:
    """A dashed vertical line where an unfreeze schedule unfroze blocks (start of that epoch)."""
    if unfreeze and unfreeze.get("epoch"):
        x = float(unfreeze["epoch"]) - 1
        fig.add_vline(x=x, line=dict(color="#6b7280", dash="dash", width=1.5))
        fig.add_annotation(
            x=x,
            y=1,
            yref="paper",
            text=f"unfreeze {len(unfreeze.get('blocks', []))} blocks",
            showarrow=False,
            xanchor="left",
            yanchor="top",
            bgcolor="rgba(255,255,255,0.75)",
            font=dict(size=11, color="#6b7280"),
        )  # inside the plot: clear of title and toolbar


def loss_figure(
    steps: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    max_points: int = 1500,
    n_epochs: int | None = None,
    unfreeze: Mapping[str, Any] | None = None,
) -> go.Figure:
    """Training loss per step (thin line) and per epoch, validation loss per epoch.

    Args:
        steps: rows with ``epoch`` (fractional) and ``loss`` (``RunStore.steps``).
        epochs: rows with ``epoch``, ``train_loss`` and ``val_loss`` (``RunStore.epochs``).
        max_points: most per-step points drawn; longer runs are thinned evenly (last step kept).
        n_epochs: the run's planned epochs, to fix the x axis while it trains.
        unfreeze: the run's unfreeze schedule (``{"epoch", "blocks", ...}``), drawn as a marker.
    """
    if len(steps) > max_points:  # a long run: every k-th step keeps the live chart light
        k = -(-len(steps) // max_points)
        steps = list(steps[::k]) + ([steps[-1]] if (len(steps) - 1) % k else [])
    fig = go.Figure()
    fig.add_scatter(
        x=[s["epoch"] for s in steps],
        y=[s["loss"] for s in steps],
        mode="lines",
        name="train loss (per step)",
        line=dict(color=TRAIN, width=1),
        opacity=0.55,
    )
    for key, colour, name in (("train_loss", TRAIN, "train loss (epoch)"), ("val_loss", VAL, "val loss")):
        fig.add_scatter(
            x=[e["epoch"] for e in epochs],
            y=[e.get(key) for e in epochs],
            mode="lines+markers",
            name=name,
            line=dict(color=colour, width=2.5),
        )
    values = [
        v
        for v in [s["loss"] for s in steps] + [e.get(k) for e in epochs for k in ("train_loss", "val_loss")]
        if v is not None and math.isfinite(v)
    ]
    yaxis = dict(range=[0, max(values) * 1.08]) if values else dict(rangemode="tozero")  # room for every series
    fig.update_layout(
        title="Loss",
        yaxis_title="cross-entropy loss",
        xaxis=_epoch_axis(n_epochs, len(epochs)),
        yaxis=yaxis,
        **_layout(hovermode="x unified"),
    )
    _unfreeze_marker(fig, unfreeze)
    return fig


def accuracy_figure(
    epochs: Sequence[Mapping[str, Any]], n_epochs: int | None = None, unfreeze: Mapping[str, Any] | None = None
) -> go.Figure:
    """Train and validation accuracy per epoch, 0-100 %; ``n_epochs`` fixes the x axis as in :func:`loss_figure`."""
    fig = go.Figure()
    for key, colour, name in (("train_acc", TRAIN, "train accuracy"), ("val_acc", VAL, "val accuracy")):
        fig.add_scatter(
            x=[e["epoch"] for e in epochs],
            y=[None if e.get(key) is None else 100 * float(e[key]) for e in epochs],
            mode="lines+markers",
            name=name,
            line=dict(color=colour, width=2.5),
        )
    best = best_epoch(epochs)
    if best is not None and len(epochs) > 1:  # the checkpoint Evaluate, Predict and Export use
        fig.add_scatter(
            x=[best["epoch"]],
            y=[100 * float(best["val_acc"])],
            mode="markers",
            name=f"kept model (epoch {best['epoch']})",
            marker=dict(symbol="star", size=14, color=VAL, line=dict(color="white", width=1)),
            hovertemplate="kept model: epoch %{x}, val %{y:.1f} %<extra></extra>",
        )
    fig.update_layout(
        title="Accuracy",
        yaxis_title="accuracy (%)",
        yaxis=dict(range=[0, 102]),
        xaxis=_epoch_axis(n_epochs, len(epochs)),
        **_layout(hovermode="x unified"),
    )
    _unfreeze_marker(fig, unfreeze)
    return fig


# -- comparing runs: overlaid curves, freeze-depth sweep, weight drift ---------------------------
def overlay_figure(rows: Sequence[Mapping[str, Any]], metric: str = "loss", runs: Sequence[str] | None = None) -> go.Figure:
    """Curves of several runs on the same axes: one colour per run, validation solid, train dotted.

    Args:
        rows: ``compare.overlay_rows`` output (``run``, ``epoch``, ``split``, ``loss``, ``accuracy``).
        metric: ``"loss"`` or ``"accuracy"``.
        runs: every run's name, in legend order; one without rows (stopped before its first epoch)
            is listed as "NAME (no completed epoch)" instead of vanishing. Default: the runs in ``rows``.

    Raises:
        ValueError: another ``metric``.
    """
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', not {metric!r}.")
    with_points = set(r["run"] for r in rows)
    runs = list(dict.fromkeys([*(runs or []), *(r["run"] for r in rows)]))
    scale = 100.0 if metric == "accuracy" else 1.0
    fig = go.Figure()
    for i, run in enumerate(runs):
        colour = PALETTE[i % len(PALETTE)]
        if run not in with_points:  # a legend entry only: said, not silently dropped
            fig.add_scatter(
                x=[None], y=[None], mode="markers", name=f"{run} (no completed epoch)", marker=dict(color=colour, size=6), hoverinfo="skip"
            )
            continue
        for split, dash in (("val", "solid"), ("train", "dot")):
            pts = [r for r in rows if r["run"] == run and r["split"] == split]
            fig.add_scatter(
                x=[p["epoch"] for p in pts],
                y=[None if p.get(metric) is None else scale * float(p[metric]) for p in pts],
                mode="lines+markers",
                name=run,
                legendgroup=run,
                showlegend=split == "val",
                line=dict(color=colour, dash=dash, width=2.5 if split == "val" else 1.5),
                marker=dict(size=6 if split == "val" else 4),
                hovertemplate=f"{run} · {split}<br>epoch %{{x}}: %{{y:.3g}}" + (" %" if metric == "accuracy" else "") + "<extra></extra>",
            )
    title = "Loss" if metric == "loss" else "Accuracy"
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>solid = validation, dotted = train</sup>"),
        xaxis=dict(title="epoch", rangemode="tozero", dtick=1 if len({r["epoch"] for r in rows}) <= 20 else None),
        yaxis=dict(
            title="cross-entropy loss" if metric == "loss" else "accuracy (%)",
            rangemode="tozero",
            **({"range": [0, 102]} if metric == "accuracy" else {}),
        ),
        **_layout(top=56),
    )
    return fig


# -- evaluation: confusion matrix, per-class scores, top-k, embeddings -----------------------------
def confusion_figure(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], selectable: bool = False) -> go.Figure:
    """Confusion-matrix heatmap: rows = true class, columns = predicted, counts in the cells.

    Args:
        cm: (C, C) counts, rows = true class (as from ``evaluate.confusion_matrix``).
        classes: class names, in index order.
        selectable: overlay one invisible marker per cell (``customdata`` = ``[true, predicted]``)
            so a click selects the cell (heatmaps alone emit no plotly selection events).
    """
    z = np.asarray(cm)
    names = [str(c) for c in classes]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=z,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{z} images<extra></extra>",
        )
    )
    if selectable:
        ii, jj = np.meshgrid(range(len(names)), range(len(names)), indexing="ij")
        fig.add_trace(
            go.Scatter(
                x=[names[j] for j in jj.ravel()],
                y=[names[i] for i in ii.ravel()],
                mode="markers",
                customdata=np.stack([ii.ravel(), jj.ravel()], 1).tolist(),
                showlegend=False,
                marker=dict(size=40 if len(names) <= 6 else 16, symbol="square", color="rgba(0,0,0,0.01)"),
                hovertemplate="true %{y}, predicted %{x}: click to see the images<extra></extra>",
            )
        )
        fig.update_layout(clickmode="event+select", dragmode=False)
    fig.update_layout(
        title="Confusion matrix<br><sup>rows = true class, columns = predicted</sup>",
        xaxis=dict(title="Predicted class", side="bottom", type="category"),
        yaxis=dict(title="True class", autorange="reversed", type="category"),
        height=max(320, 60 * len(names) + 140),
        **_layout(top=50),
    )
    return fig


def per_class_figure(report: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Grouped bars of precision, recall and F1 per class (``evaluate.classification_report`` rows)."""
    names = [str(r["class"]) for r in report]
    fig = go.Figure(
        [
            go.Bar(
                name=label,
                x=names,
                y=[r[key] for r in report],
                text=[f"{r[key]:.2f}" for r in report],
                marker_color=colour,
                textposition="outside",
                hovertemplate=f"%{{x}}: {label} %{{y:.3f}}<extra></extra>",
            )
            for (key, label), colour in zip((("precision", "precision"), ("recall", "recall"), ("f1", "F1")), PALETTE)
        ]
    )
    fig.update_layout(
        title="Per-class precision, recall and F1",
        barmode="group",
        yaxis=dict(title="score", range=[0, 1.1]),
        xaxis=dict(title="class", type="category"),
        height=360,
        **_layout(top=50, legend=_LEGEND_BELOW),
    )
    return fig


def topk_figure(preds: Any, title: str | None = None) -> go.Figure:
    """Horizontal bars of the top-k classes and their probabilities, most likely on top.

    Args:
        preds: an ``evaluate.Prediction`` (its ``top``) or ``[(class name, probability), ...]``.
        title: figure title; default "Top-k classes".
    """
    top = list(getattr(preds, "top", preds))
    names, probs = [str(c) for c, _ in top], [float(p) for _, p in top]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            text=[f"{p:.1%}" for p in probs],
            marker_color=TRAIN,
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.1%}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"Top-{len(top)} classes",
        xaxis=dict(title="probability", range=[0, 1], tickformat=".0%"),
        yaxis=dict(autorange="reversed", type="category"),
        height=max(220, 48 * len(top) + 120),
        **_layout(top=50),
    )
    return fig


def embedding_figure(
    points: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    classes: Sequence[str],
    title: str,
    explained: Sequence[float] | None = None,
    hover: Sequence[str] | None = None,
) -> go.Figure:
    """Scatter of 2-D embedding points, one colour per class.

    Args:
        points: (N, 2) coordinates (e.g. ``evaluate.embeddings(...)["after"]["points"]``).
        labels: class index per point.
        classes: class names.
        title: figure title.
        explained: explained-variance ratio of the two axes, shown in the axis titles.
        hover: text per point (e.g. file names).
    """
    pts, lab = np.asarray(points, dtype=float).reshape(-1, 2), np.asarray(labels)
    fig = go.Figure()
    for i, name in enumerate(classes):
        idx = np.flatnonzero(lab == i)
        fig.add_trace(
            go.Scatter(
                x=pts[idx, 0],
                y=pts[idx, 1],
                mode="markers",
                name=str(name),
                marker=dict(size=8, opacity=0.8, color=PALETTE[i % len(PALETTE)]),
                text=[hover[j] for j in idx] if hover is not None else None,
                hovertemplate=f"{name}" + ("<br>%{text}" if hover is not None else "") + "<extra></extra>",
            )
        )
    ex = list(explained) if explained is not None else None
    fig.update_layout(
        title=title,
        height=420,
        **_layout(top=50, legend=_LEGEND_BELOW),
        xaxis=dict(title=f"PC 1 ({ex[0]:.0%} of variance)" if ex else "PC 1", zeroline=False),
        yaxis=dict(title=f"PC 2 ({ex[1]:.0%} of variance)" if ex else "PC 2", zeroline=False),
    )
    return fig
