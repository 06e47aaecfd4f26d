"""Pure chart functions: rows in, plotly Figure out. No Streamlit, no torch.

The one home for the dashboard's figures: data (class counts), model (blocks strip), training
curves (loss, accuracy), comparing runs (overlaid curves, freeze-depth sweep, weight drift) and
evaluation (confusion matrix, per-class scores, top-k, embeddings).

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
from plotly.colors import qualitative
from plotly.subplots import make_subplots

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
    "confusion_figure",
    "per_class_figure",
    "topk_figure",
    "embedding_figure",
]

#: One colour per run or class, in order: Tableau 10, then Dark24 for more than ten.
PALETTE: tuple[str, ...] = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    *qualitative.Dark24,
)
FROZEN = "#7f93ad"  # slate blue-grey: weights kept as loaded
TRAINABLE = PALETTE[1]  # orange: weights that learn
TRAIN = PALETTE[0]  # blue: train split / train curves
VAL = PALETTE[2]  # orange-red: validation split / validation curves
BN_STATS = PALETTE[4]  # green: BatchNorm running statistics

# Legends sit under the plot, left-aligned: they never meet the title (top left) or plotly's
# toolbar (top right, shown on hover), and a long legend on a narrow chart wraps downwards.
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0, yref="paper")
# The toolbar keeps only what helps here: download, zoom, pan, reset (four icons, top right).
_MODEBAR = dict(remove=["select2d", "lasso2d", "zoomin", "zoomout", "autoscale", "togglespikelines", "hoverclosest", "hovercompare"])


def _layout(top: int = 48, legend: Mapping[str, Any] = _LEGEND_BELOW, hovermode: str = "closest") -> dict[str, Any]:
    """The layout every chart shares: thin margins (``top`` leaves room for a title and subtitle,
    on the left), the legend under the plot, the hover mode, and a short toolbar."""
    return dict(
        margin=dict(l=10, r=10, t=top, b=10), legend=dict(legend), hovermode=hovermode, title_x=0, title_xref="paper", modebar=_MODEBAR
    )


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
    fig.add_scatter(
        x=[e["epoch"] for e in epochs],
        y=[e.get("train_loss") for e in epochs],
        mode="lines+markers",
        name="train loss (epoch)",
        line=dict(color=TRAIN, width=2.5),
    )
    fig.add_scatter(
        x=[e["epoch"] for e in epochs],
        y=[e.get("val_loss") for e in epochs],
        mode="lines+markers",
        name="val loss",
        line=dict(color=VAL, width=2.5),
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


def sweep_figure(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Best validation accuracy and training time against trainable parameters (log x), one point per depth.

    Runs of the same depth that differ only by seed (``--repeats``) are merged
    (:func:`stats.group_repeats`): the point is their mean and the error bar the 95% interval of
    the mean; a single run's bar is its Wilson interval on the validation images. The time panel
    shows each depth's cost in GFLOPs per epoch (machine-independent) beside the seconds, and draws
    timings taken while the machine was shared as hollow markers.

    Args:
        points: ``compare.sweep_points`` output; runs without results yet are left out.
    """
    from .stats import group_repeats

    done = [p for p in group_repeats(points) if p.get("trainable_params")]
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=("Best validation accuracy (95% interval)", "Total training time")
    )
    for title in fig.layout.annotations:  # subplot titles on the left of each plot: the toolbar is top right
        title.update(
            x=fig.layout.xaxis.domain[0] if title.text.startswith("Best") else fig.layout.xaxis2.domain[0], xanchor="left", align="left"
        )
    acc = {id(p): 100 * float(p["best_val_accuracy"]) for p in done}
    secs = {id(p): float(p.get("train_seconds") or 0) for p in done}
    groups = (("pretrained", False, TRAINABLE, "circle"), ("from scratch", True, FROZEN, "diamond"))
    top_secs = max(secs.values(), default=0.0) or 1.0
    for col, values, span in ((1, acc, 112.0), (2, secs, top_secs)):  # span: the y axis, which starts at 0
        labels = _point_labels(done, values, span)
        for name, scratch, colour, symbol in groups:
            pts = sorted((p for p in done if bool(p.get("from_scratch")) == scratch), key=lambda p: p["trainable_params"])
            if not pts:
                continue
            trace = _sweep_trace(pts, colour, symbol, name, scratch)
            text = [labels[id(p)][0] for p in pts]
            if col == 1:
                trace["error_y"] = dict(
                    type="data",
                    symmetric=False,
                    color=colour,
                    thickness=1.5,
                    width=4,
                    array=[100 * (p["acc_high"] - p["best_val_accuracy"]) for p in pts],
                    arrayminus=[100 * (p["best_val_accuracy"] - p["acc_low"]) for p in pts],
                )
            else:
                text = [
                    t + (f"<br>{p['gflops_per_epoch']:.3g} GFLOP/epoch" if t and p.get("gflops_per_epoch") else "")
                    for t, p in zip(text, pts)
                ]  # a second line: labels stay narrow
                trace["marker"]["symbol"] = [symbol + ("-open" if p.get("shared_machine") else "") for p in pts]
                if any(p.get("repeats", 1) > 1 for p in pts):
                    trace["error_y"] = dict(
                        type="data", array=[p.get("seconds_sd") or 0 for p in pts], color=colour, thickness=1.5, width=4
                    )
            fig.add_scatter(
                y=[values[id(p)] for p in pts],
                name=name,
                showlegend=col == 1,
                row=1,
                col=col,
                text=text,
                textposition=[labels[id(p)][1] for p in pts],
                **trace,
            )
    if any(p.get("shared_machine") for p in done):  # a second line: the first stays clear of the toolbar
        fig.layout.annotations[1].text += "<br><sup>hollow: timed on a shared machine, seconds inflated</sup>"
    xs = [math.log10(p["trainable_params"]) for p in done]
    pad = 0.6  # decades of room either side, so labels centred on the outer points stay inside
    fig.update_xaxes(
        type="log", dtick=1, title_text="trainable parameters (log scale)", range=[min(xs) - pad, max(xs) + pad] if xs else None
    )
    fig.update_yaxes(title_text="best val accuracy (%)", range=[0, 112], row=1, col=1)
    fig.update_yaxes(title_text="seconds", rangemode="tozero", row=1, col=2)
    fig.update_layout(**_layout(top=56))
    return fig


def _sweep_trace(pts: Sequence[Mapping[str, Any]], colour: str, symbol: str, name: str, scratch: bool) -> dict[str, Any]:
    """What both panels of the sweep chart share for one group of runs: x, markers, line and hover."""
    custom = [
        [
            p["label"],
            p["freeze_label"],
            p["status"],
            f"{int(p['trainable_params']):,}",
            100 * float(p["best_val_accuracy"]),
            float(p.get("train_seconds") or 0),
            p["run_id"],
            100 * float(p.get("acc_low", p["best_val_accuracy"])),
            100 * float(p.get("acc_high", p["best_val_accuracy"])),
            int(p.get("repeats") or 1),
            f"{p['gflops_per_epoch']:.3g} GFLOPs" if p.get("gflops_per_epoch") else "not measured",
            " (machine shared: inflated)" if p.get("shared_machine") else "",
        ]
        for p in pts
    ]
    hover = (
        "<b>%{customdata[0]}</b><br>%{customdata[1]} · %{customdata[2]}<br>"
        "trainable params: %{customdata[3]}<br>best val accuracy: %{customdata[4]:.1f} % "
        "(95%: %{customdata[7]:.0f}-%{customdata[8]:.0f} %, %{customdata[9]} run(s))<br>"
        "training time: %{customdata[5]:.1f} s%{customdata[11]}<br>cost per epoch: %{customdata[10]}<br>"
        "run %{customdata[6]}<extra></extra>"
    )
    return dict(
        x=[p["trainable_params"] for p in pts],
        customdata=custom,
        hovertemplate=hover,
        mode="markers+text" if scratch else "markers+text+lines",
        marker=dict(color=colour, size=12, symbol=symbol, line=dict(width=1, color="white")),
        line=dict(color=colour, width=1, dash="dot"),
        legendgroup=name,
        cliponaxis=False,
    )


def _point_labels(points: Sequence[Mapping[str, Any]], ys: Mapping[int, float], span: float) -> dict[int, tuple[str, str]]:
    """Text and position of each point's label in one panel, so that no two labels print on top of
    each other: points at the same spot share one label ("4 frozen · full", the others show none);
    of two labelled points close together (on the log x axis and the y range), the lower one's
    label goes below it (the later one's, at equal height). ``span`` is the height of the y axis, in
    data units, so "close" means close on the screen. Keyed by ``id(point)``."""
    spots = sorted(((math.log10(p["trainable_params"]), ys[id(p)], p) for p in points), key=lambda t: (t[0], -t[1]))
    units: list[list[Any]] = []  # [x, y, text, position, points]
    for x, y, p in spots:
        same = next((u for u in units if abs(u[0] - x) < 0.06 and abs(u[1] - y) < 0.05 * span), None)
        if same is not None:
            same[2], same[4] = f"{same[2]} · {_point_text(p)}", [*same[4], p]
        else:
            units.append([x, y, _point_text(p), "top center", [p]])
    for k, u in enumerate(units):
        for v in units[:k]:
            if abs(u[0] - v[0]) < 0.45 and abs(u[1] - v[1]) < 0.15 * span:
                lower = u if u[1] <= v[1] else v
                lower[3] = "bottom center"
    out: dict[int, tuple[str, str]] = {}
    for _x, _y, text, position, members in units:
        for n, p in enumerate(members):
            out[id(p)] = (text if n == 0 else "", position)
    return out


def _point_text(p: Mapping[str, Any]) -> str:
    """A sweep point's short label: probe, full, 'N frozen' or scratch."""
    if p.get("from_scratch"):
        return "scratch"
    f = str(p.get("freeze"))
    return {"head": "probe", "none": "full"}.get(f, f"{f} frozen" if f.isdigit() else f)


def drift_figure(rows: Sequence[Mapping[str, Any]], start: str = "pretrained") -> go.Figure:
    """Per block, how far the weights moved from their start: frozen blocks grey at zero, trainable orange.

    Relative changes use the left axis; the head (which starts at zero, so only its absolute
    size means something) is hatched on the right axis. BatchNorm running-statistics drift, when
    measured, is drawn as green diamonds on the left axis.

    Args:
        rows: ``compare.weight_drift`` output.
        start: what the weights started from, for the title (``"pretrained"`` or ``"random"``).
    """
    names = [r["block"] for r in rows]
    fig = go.Figure()
    rel = [r for r in rows if r["measure"] == "relative"]
    for frozen, colour, label in ((True, FROZEN, "frozen (kept as loaded)"), (False, TRAINABLE, "trainable")):
        pts = [r for r in rel if bool(r["frozen"]) == frozen]
        if not pts:
            continue
        fig.add_bar(
            x=[r["block"] for r in pts],
            y=[r["drift"] for r in pts],
            name=label,
            marker_color=colour,
            text=["frozen · 0" if frozen and r["drift"] == 0 else f"{r['drift']:.3g}" for r in pts],
            textposition="outside",
            cliponaxis=False,
            customdata=[[f"{r['params']:,}"] for r in pts],
            hovertemplate="%{x}: relative change %{y:.4g}<br>%{customdata[0]} params<extra>" + label + "</extra>",
        )
    heads = [r for r in rows if r["measure"] == "absolute"]
    if heads:
        fig.add_bar(
            x=[r["block"] for r in heads],
            y=[r["drift"] for r in heads],
            yaxis="y2",
            name="head: absolute size (started at 0), right axis",
            marker_color=TRAINABLE,
            marker_pattern_shape="/",
            text=[f"‖w‖ {r['drift']:.3g}" for r in heads],
            textposition="inside",
            cliponaxis=False,
            customdata=[[f"{r['params']:,}"] for r in heads],
            hovertemplate="%{x}: ‖w_after − w_before‖ = %{y:.4g} (absolute)<br>%{customdata[0]} params<extra></extra>",
        )
    bn = [r for r in rows if r.get("bn_drift") is not None]
    if bn:
        fig.add_scatter(
            x=[r["block"] for r in bn],
            y=[r["bn_drift"] for r in bn],
            mode="markers",
            name="BatchNorm running statistics",
            marker=dict(symbol="diamond", size=11, color=BN_STATS, line=dict(width=1, color="white")),
            hovertemplate="%{x}: BN running mean/var moved %{y:.4g} (relative)<extra></extra>",
        )
    fig.update_layout(
        title=dict(text=f"How far each block moved from its {start} start<br><sup>‖w_after − w_before‖ / ‖w_before‖</sup>"),
        xaxis=dict(title="block (input → output)", categoryorder="array", categoryarray=names),
        yaxis=dict(title="relative change", rangemode="tozero"),
        yaxis2=dict(title="head: ‖w‖", overlaying="y", side="right", rangemode="tozero", showgrid=False),
        barmode="overlay",
        bargap=0.2,
        **_layout(top=90),
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


def data_curve_figure(points: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Validation accuracy against training images per class, one line per plan, the draws' spread as a band.

    Args:
        points: ``data_curve.DataCurve.points`` rows: ``{"plan", "n_per_class", "mean", "min", "max",
            "std", "accuracies"}``.
    """
    fig = go.Figure()
    plans = list(dict.fromkeys(str(p["plan"]) for p in points))
    names = {"head": "linear probe (frozen backbone)", "none": "fine-tune everything", "scratch": "from scratch"}
    for k, plan in enumerate(plans):
        rows = sorted((p for p in points if str(p["plan"]) == plan), key=lambda p: p["n_per_class"])
        x = [p["n_per_class"] for p in rows]
        colour = PALETTE[k % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=[p["max"] for p in rows] + [p["min"] for p in rows][::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.18,
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
            )
        )
        label = names.get(plan, f"{plan} blocks frozen" if plan.isdigit() else plan)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[p["mean"] for p in rows],
                mode="lines+markers",
                name=label,
                line=dict(color=colour),
                error_y=dict(type="data", array=[p["std"] for p in rows], visible=True, thickness=1),
                customdata=[[len(p["accuracies"]), p["min"], p["max"]] for p in rows],
                hovertemplate="%{x} images per class: %{y:.1%} mean of %{customdata[0]} draws "
                "(min %{customdata[1]:.1%}, max %{customdata[2]:.1%})<extra></extra>",
            )
        )
    fig.update_layout(
        title="How much data do I need?<br><sup>validation accuracy against training images per "
        "class; band = min to max of the draws, bars = 1 std</sup>",
        xaxis=dict(title="training images per class", type="log"),
        yaxis=dict(title="validation accuracy", range=[0, 1.05], tickformat=".0%"),
        height=420,
        **_layout(top=60),
    )
    return fig


def lr_find_figure(
    curve: Sequence[Mapping[str, Any]], suggested: float | None = None, marks: Mapping[str, float] | None = None
) -> go.Figure:
    """Loss against learning rate (log x) from ``lr_finder.lr_find``: smoothed loss, raw loss faint,
    the suggestion as a dashed line and other candidates (``{"steepest": lr, ...}``) as dotted ones."""
    fig = go.Figure()
    xs = [float(p["lr"]) for p in curve]
    if any("raw_loss" in p for p in curve):
        fig.add_scatter(
            x=xs, y=[p.get("raw_loss") for p in curve], name="loss per batch", mode="lines", line=dict(color=TRAIN, width=1), opacity=0.3
        )
    fig.add_scatter(x=xs, y=[p["loss"] for p in curve], name="smoothed loss", mode="lines", line=dict(color=TRAIN, width=2))
    for name, lr in (marks or {}).items():
        fig.add_vline(x=float(lr), line=dict(color=FROZEN, dash="dot", width=1), annotation_text=name, annotation_position="bottom right")
    if suggested:
        fig.add_vline(
            x=float(suggested),
            line=dict(color=VAL, dash="dash", width=2),
            annotation_text=f"suggested {float(suggested):.1e}",
            annotation_position="top left",
        )
    smooth = [p["loss"] for p in curve]
    top = max(smooth[: max(1, len(smooth) // 10)] + [min(smooth) if smooth else 1.0]) * 1.3 if smooth else None
    fig.update_xaxes(type="log", title_text="learning rate (log scale)")
    fig.update_yaxes(title_text="training loss", range=[0, top] if top else None)
    fig.update_layout(**_layout(top=40))
    return fig
