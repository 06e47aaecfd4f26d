"""Figures that compare runs and settings: the freeze-depth sweep, weight drift, the data curve
("how much data do I need?") and the learning-rate finder. Rows in, plotly Figure out.

Split from :mod:`charts` (which re-exports every figure here, so ``charts.sweep_figure`` keeps
working); both share :mod:`charts_style`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts_style import BN_STATS, FROZEN, PALETTE, TRAIN, TRAINABLE, VAL, _layout

__all__ = ["sweep_figure", "drift_figure", "data_curve_figure", "lr_find_figure"]


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
            text = _sweep_panel(trace, pts, [labels[id(p)][0] for p in pts], col, colour, symbol)
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
    _sweep_axes(fig, done)
    return fig


def _sweep_panel(trace: dict[str, Any], pts: Sequence[Mapping[str, Any]], text: list[str], col: int, colour: str, symbol: str) -> list[str]:
    """What differs between the sweep chart's panels, added to ``trace``: the accuracy panel's 95%
    interval bars; the time panel's GFLOPs line under each label, hollow markers for timings taken on
    a shared machine and, for repeats, the seconds' spread. Returns the labels to print."""
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
            t + (f"<br>{p['gflops_per_epoch']:.3g} GFLOP/epoch" if t and p.get("gflops_per_epoch") else "") for t, p in zip(text, pts)
        ]  # a second line: labels stay narrow
        trace["marker"]["symbol"] = [symbol + ("-open" if p.get("shared_machine") else "") for p in pts]
        if any(p.get("repeats", 1) > 1 for p in pts):
            trace["error_y"] = dict(type="data", array=[p.get("seconds_sd") or 0 for p in pts], color=colour, thickness=1.5, width=4)
    return text


def _sweep_axes(fig: go.Figure, done: Sequence[Mapping[str, Any]]) -> None:
    """The sweep chart's axes (log x with room for the outer labels) and the shared-machine note."""
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
