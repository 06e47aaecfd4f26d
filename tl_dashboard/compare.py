"""Compare runs: configs side by side, overlaid curves, freeze-depth sweeps, and weight drift.

Everything here reads the :class:`~tl_dashboard.runs.RunStore` (and, for the weight drift, the
run's checkpoint) and returns plain rows; :mod:`tl_dashboard.charts` turns them into figures
(``overlay_figure``, ``sweep_figure``, ``drift_figure``). No Streamlit.

* :func:`compare_table` - one row per setting or result, one column per run, ``differs`` per row;
* :func:`overlay_rows` - epoch metrics of several runs in long format, for overlaid curves;
* :func:`weight_drift` - how far each block moved from its pretrained start (relative L2);
* :func:`sweep_freezes`, :func:`queue_sweep`, :func:`list_sweeps`, :func:`sweep_points` - a
  freeze-depth sweep: one queued run per depth on the same data, split and seed, one group id.

Example:
    >>> store = RunStore("runs")
    >>> group, ids = queue_sweep(store, TrainConfig(data_dir="sample_data/emoji3", epochs=3),
    ...                          sweep_freezes("0,3,6,all", n_body=9))
    >>> [p["freeze"] for p in sweep_points(store, group)]
    ['none', '3', '6', 'head']
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

from . import worker
from .engine import TrainConfig
from .errors import UserError
from .formatting import NO_EPOCH, best_accuracy, format_config_value, format_seconds, no_completed_epoch
from .layers import Block, freeze_label, frozen_from_spec, normalize_freeze
from .runs import ACTIVE_STATUSES, RunStore
from .stats import accuracy_text, overlap_note, run_interval

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "COMPARE_FIELDS",
    "run_labels",
    "compare_table",
    "compare_overlap_note",
    "overlay_rows",
    "weight_drift",
    "sweep_freezes",
    "classroom_freezes",
    "experiment_plan",
    "queue_sweep",
    "list_sweeps",
    "sweep_points",
]


class CompareError(UserError, ValueError):
    """A comparison that cannot be made (no checkpoint, a start that cannot be rebuilt, bad sweep depths)."""


# The rows of the comparison table, in display order.
COMPARE_FIELDS = (
    "data",
    "data set",
    "model",
    "weights source",
    "freeze plan",
    "trainable params",
    "BN mode",
    "learning rate",
    "batch size",
    "augmentation",
    "image size",
    "seed",
    "epochs",
    "best val accuracy",
    "time per epoch",
    "total time",
    "cost per epoch",
    "timing",
)


# -- labels and formatting ----------------------------------------------------------------------
def run_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """A unique display name per run: its label (or id); repeated names get the id's suffix.

    Example:
        >>> run_labels([{"id": "a-1f2e", "label": "x"}, {"id": "b-77aa", "label": "x"}])
        ['x (1f2e)', 'x (77aa)']
    """
    names = [str(r.get("label") or r.get("id")) for r in runs]
    out = []
    for name, r in zip(names, runs):
        if names.count(name) > 1:
            name = f"{name} ({str(r.get('id', '')).rsplit('-', 1)[-1]})"
        out.append(name)
    for i, name in enumerate(out):  # still equal (same label and suffix): number them
        if out.count(name) > 1:
            out[i] = f"{name} #{i + 1}"
    return out


def _time_per_epoch(run: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]] | None) -> float | None:
    secs = [float(e["seconds"]) for e in epochs or () if e.get("seconds") is not None]
    if secs:
        return sum(secs) / len(secs)
    s = run.get("summary") or {}
    if s.get("train_seconds") and s.get("epochs"):
        return float(s["train_seconds"]) / int(s["epochs"])
    return None


def _total_time(run: Mapping[str, Any]) -> float | None:
    s = run.get("summary") or {}
    if s.get("train_seconds") is not None:
        return float(s["train_seconds"])
    if run.get("started") and run.get("finished"):
        return float(run["finished"]) - float(run["started"])
    return None


def _data_set_text(run: Mapping[str, Any]) -> str:
    """Name, image count and the start of the content fingerprint (same text: same images)."""
    from .datasets import dataset_label

    fp = str((run.get("dataset") or {}).get("fingerprint") or "")
    return dataset_label(run) + (f" · {fp[:8]}" if fp else "")


def _field_values(run: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    c, s = run.get("config") or {}, run.get("summary") or {}
    best = best_accuracy(s)
    done, planned = s.get("epochs"), c.get("epochs") or (s.get("auto") or {}).get("epochs_planned")
    if done is None:
        epochs_txt = f"- of {planned}" if planned else "-"
    else:
        epochs_txt = str(done) if planned in (None, done) else f"{done} of {planned}"
    size = s.get("image_size") or c.get("image_size")
    weights = (s.get("weights") or {}).get("source") or c.get("weights", "")
    trainable = s.get("trainable_params")
    return {
        "data": str(c.get("data_dir", "")),
        "data set": _data_set_text(run),
        "model": str(c.get("model", "")),
        "weights source": str(weights) + (" (random init)" if weights == "none" else ""),
        "freeze plan": s.get("freeze_label") or freeze_label(c.get("freeze", "head")),
        "trainable params": "-" if trainable is None else f"{int(trainable):,}",
        "BN mode": str(c.get("bn_mode", "")),
        "learning rate": "-" if c.get("lr") is None else str(format_config_value("lr", float(c["lr"]), s)),
        "batch size": str(c.get("batch_size", "")),
        "augmentation": "on" if c.get("augment") else "off",
        "image size": f"{size} px" if size else "default",
        "seed": str(c.get("seed", "")),
        "epochs": epochs_txt,
        "best val accuracy": NO_EPOCH if no_completed_epoch(s) else accuracy_text(best, s.get("val_images")),
        "time per epoch": format_seconds(_time_per_epoch(run, epochs)),
        "total time": format_seconds(_total_time(run)),
        "cost per epoch": f"{float(s['gflops_per_epoch']):.3g} GFLOPs" if s.get("gflops_per_epoch") else "-",
        "timing": _timing_text(s),
    }


def _timing_text(s: Mapping[str, Any]) -> str:
    """Whether the seconds are comparable: measured alone, or on a shared machine (inflated)."""
    if s.get("shared_machine") is None:
        return "-"
    load = s.get("load_avg")
    if isinstance(load, Mapping):  # the engine's {start, end, cores}: the higher of the two readings
        load = max((v for v in (load.get("start"), load.get("end")) if v is not None), default=None)
    load_txt = f", load {float(load[0] if isinstance(load, (list, tuple)) else load):.1f}" if load is not None else ""
    cpu = s.get("cpu_seconds")
    cpu_txt = f", CPU {format_seconds(float(cpu))}" if cpu is not None else ""
    return ("shared machine: seconds inflated" if s["shared_machine"] else "machine to itself") + load_txt + cpu_txt


def compare_overlap_note(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """A sentence naming the runs whose best-accuracy 95% intervals overlap (None if none do)."""
    return overlap_note(
        run_labels(runs),
        [
            run_interval({**(r.get("summary") or {}), "best_val_accuracy": best_accuracy(r.get("summary"))}, "best_val_accuracy")
            for r in runs
        ],
    )


def compare_table(
    runs: Sequence[Mapping[str, Any]], epochs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """The settings and results of runs side by side.

    Values are display strings, and a row ``differs`` when the runs show different strings, so
    what is flagged is exactly what the reader sees differ (a 0.4 % accuracy gap that rounds to
    the same text is not flagged; measured times nearly always differ).

    Args:
        runs: ``RunStore.get_run`` dicts, in the column order wanted.
        epochs: optional ``{run_id: RunStore.epochs(run_id)}``; time per epoch is then the mean of
            the measured epochs, else ``train_seconds / epochs`` (which includes data loading).

    Returns:
        One dict per field of :data:`COMPARE_FIELDS`: ``{"field": name, <run label>: value, ...,
        "differs": bool}``, run labels as :func:`run_labels` makes them.

    Example:
        >>> rows = compare_table([{"id": "a", "config": {"lr": 1e-3}}, {"id": "b", "config": {"lr": 1e-2}}])
        >>> next(r for r in rows if r["field"] == "learning rate")
        {'field': 'learning rate', 'a': '0.001', 'b': '0.01', 'differs': True}
    """
    labels = run_labels(runs)
    values = [_field_values(r, (epochs or {}).get(str(r.get("id")))) for r in runs]
    rows = []
    for f in COMPARE_FIELDS:
        row: dict[str, Any] = {"field": f}
        for label, v in zip(labels, values):
            row[label] = v[f]
        row["differs"] = len({v[f] for v in values}) > 1
        rows.append(row)
    return rows


def overlay_rows(store: RunStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Epoch metrics of several runs in long format, for curves overlaid on the same axes.

    Returns:
        One row per run, epoch and split: ``{"run_id", "run" (unique label), "epoch",
        "split" ("train" | "val"), "loss", "accuracy" (0..1)}``; runs in the order given,
        unknown ids skipped.
    """
    runs = [r for r in (store.get_run(i) for i in run_ids) if r is not None]
    rows: list[dict[str, Any]] = []
    for run, label in zip(runs, run_labels(runs)):
        for e in store.epochs(run["id"]):
            for split in ("train", "val"):
                rows.append(
                    {
                        "run_id": run["id"],
                        "run": label,
                        "epoch": e["epoch"],
                        "split": split,
                        "loss": e.get(f"{split}_loss"),
                        "accuracy": e.get(f"{split}_acc"),
                    }
                )
    return rows


# -- weight drift -------------------------------------------------------------------------------
def _owned(name: str, modules: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _l2(names: Sequence[str], before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[float, float]:
    """``(||after - before||, ||before||)`` over the named tensors."""
    import torch

    change = start = 0.0
    for n in names:
        b, a = before[n].detach().double(), after[n].detach().double()
        if b.shape != a.shape:  # e.g. a head for another number of classes: it started at zero
            b = torch.zeros_like(a)
        change += float(((a - b) ** 2).sum())
        start += float((b**2).sum())
    return math.sqrt(change), math.sqrt(start)


def weight_drift(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """How far each block's weights moved from their pretrained start during training.

    The start is rebuilt with ``engine.prepare`` from the run's config (same weights source and
    seed give the same start) and compared with the trained checkpoint. Frozen blocks come out
    exactly 0.0. The new head starts at zero, so a relative change means nothing there: for it
    (and any block whose start is all zeros) the absolute L2 norm of the change is reported,
    with ``measure="absolute"``.

    Args:
        store: the run store.
        run_id: a run with a checkpoint (finished or stopped).

    Returns:
        One dict per block in forward order: ``{"block", "kind", "frozen", "params",
        "drift", "measure" ("relative" | "absolute"), "bn_drift"}``. ``drift`` is
        ``||w_after - w_before|| / ||w_before||`` over the block's parameters (or the absolute
        ``||w_after - w_before||``); ``bn_drift`` is the same relative change of the BatchNorm
        running mean and variance when the run used ``bn_mode="train"``, else None (and None
        for blocks without BatchNorm).

    Raises:
        KeyError: unknown run.
        CompareError: no checkpoint yet, or the starting weights cannot be rebuilt here (the
            weights now come from another source).

    Example:
        >>> [(r["block"], round(r["drift"], 3)) for r in weight_drift(store, run_id)][:2]
        [('stem', 0.0), ('blocks.0', 0.0)]
    """

    from .engine import load_checkpoint, start_model

    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"No run {run_id!r} in {store.root}.")
    run_dir = store.run_dir(run_id)
    if no_completed_epoch(run.get("summary")):  # older stores kept a mid-epoch model: not a trained one
        raise CompareError(f"Run {run_id} ended with {NO_EPOCH}; weight drift needs a trained model.")
    if not store.has_checkpoint(run_id):
        raise CompareError(f"Run {run_id} has no checkpoint yet ({run['status']}); weight drift needs a trained model.")
    config = TrainConfig.from_dict(run["config"])
    trained, classes, _meta = load_checkpoint(run_dir)
    try:  # the start needs only the model and its weights, not the data folder
        initial, weights, blocks, plan, _size = start_model(config, len(classes))
    except UserError as exc:
        raise CompareError(f"Cannot rebuild the starting weights of run {run_id}: {str(exc).splitlines()[0]}") from exc
    recorded = ((run.get("summary") or {}).get("weights") or {}).get("source")
    if recorded and recorded != weights.source:
        raise CompareError(
            f"Run {run_id} started from '{recorded}' weights, but here they would come from "
            f"'{weights.source}', so its start cannot be rebuilt on this machine."
        )
    return _drift_rows(blocks, initial, trained, plan.frozen, config.bn_mode == "train")


def _drift_rows(
    blocks: Sequence[Block], initial: nn.Module, trained: nn.Module, frozen: Collection[str], bn_train: bool
) -> list[dict[str, Any]]:
    """``weight_drift``'s rows: each block's change from ``initial`` to ``trained`` (see there)."""
    before_p = dict(initial.named_parameters())
    after_p = dict(trained.named_parameters())
    before_b = dict(initial.named_buffers())
    after_b = dict(trained.named_buffers())

    rows = []
    for blk in blocks:
        names = blk.param_names(initial)
        change, start = _l2(names, before_p, after_p)
        absolute = blk.kind == "head" or start == 0.0
        bn_drift = None
        if bn_train:
            stats = [
                n for n in before_b if _owned(n, blk.modules) and n.rsplit(".", 1)[-1] in ("running_mean", "running_var") and n in after_b
            ]
            if stats:
                s_change, s_start = _l2(stats, before_b, after_b)
                bn_drift = s_change / s_start if s_start else s_change
        rows.append(
            {
                "block": blk.name,
                "kind": blk.kind,
                "frozen": blk.name in frozen,
                "params": int(sum(before_p[n].numel() for n in names)),
                "drift": change if absolute else change / start,
                "measure": "absolute" if absolute else "relative",
                "bn_drift": bn_drift,
            }
        )
    return rows


# -- sweeps -------------------------------------------------------------------------------------
def sweep_freezes(spec: str, n_body: int) -> list[str]:
    """Freeze specs for a sweep from a comma list of frozen-block counts.

    ``"0"`` (or ``"none"``) is a full fine-tune, ``n_body`` or ``"all"`` (or ``"head"``) is head
    only; repeats are dropped, the order is kept.

    Args:
        spec: e.g. ``"0,2,4,all"``.
        n_body: number of freezable blocks below the head (``len(blocks) - 1``).

    Raises:
        ValueError: a token that is not a count in ``0..n_body``, ``all``, ``head`` or ``none``.

    Example:
        >>> sweep_freezes("0,2,4,all", 9)
        ['none', '2', '4', 'head']
    """
    out = []
    for tok in [t.strip() for t in str(spec).split(",") if t.strip()]:
        norm = normalize_freeze(tok)
        if norm not in ("head", "none"):
            if not tok.isdigit() or int(tok) > n_body:
                raise CompareError(f"Sweep depth {tok!r} is not a block count in 0..{n_body}, 'all' or 'none'.")
            norm = "head" if int(tok) == n_body else str(int(tok))
        out.append(norm)
    if not out:
        raise CompareError(f"No sweep depths in {spec!r}; give a comma list like '0,2,4,all'.")
    return list(dict.fromkeys(out))


def classroom_freezes(n_body: int) -> list[str]:
    """The class experiment's depths, quickest first: head only, the top two blocks trained,
    the first half frozen, full fine-tune (fewer for very shallow models).

    Example:
        >>> classroom_freezes(9)
        ['head', '7', '4', 'none']
    """
    partial = [str(n) for n in (n_body - 2, n_body // 2) if 0 < n < n_body]
    return list(dict.fromkeys(["head", *partial, "none"]))


def experiment_plan(blocks: Sequence[Block], freezes: Sequence[str], *, from_scratch: bool = False) -> list[dict[str, Any]]:
    """What each run of a sweep will train, before it is queued (for the Learn page's table).

    Args:
        blocks: the model's blocks in forward order (``layers.describe_blocks`` for the right
            number of classes).
        freezes: freeze specs, as for :func:`queue_sweep`.
        from_scratch: add the from-scratch run at the end, as :func:`queue_sweep` does.

    Returns:
        ``{"run", "weights", "freeze plan", "trains", "trainable params"}`` per run, in queue order.
    """
    body = [b.name for b in blocks if b.kind != "head"]
    params = {b.name: int(b.params or 0) for b in blocks}
    specs = [
        (normalize_freeze(f), f"freeze={normalize_freeze(f)}", "pretrained") for f in dict.fromkeys(normalize_freeze(f) for f in freezes)
    ]
    if from_scratch:
        specs.append(("none", "from scratch", "random"))
    rows = []
    for spec, label, weights in specs:
        frozen = set(frozen_from_spec(spec, blocks))
        training = [n for n in body if n not in frozen]
        if not training:
            trains = "only the new head"
        elif len(training) == len(body):
            trains = "every block" + (", starting from random weights" if weights == "random" else "")
        else:
            trains = f"the last {len(training)} blocks ({training[0]} … {training[-1]}) and the head"
        rows.append(
            {
                "run": label,
                "weights": weights,
                "freeze plan": freeze_label("head" if len(frozen) == len(body) else spec),
                "trains": trains,
                "trainable params": sum(p for n, p in params.items() if n not in frozen),
            }
        )
    return rows


def queue_sweep(
    store: RunStore,
    base: TrainConfig,
    depths: Sequence[str],
    *,
    from_scratch: bool = False,
    label_prefix: str = "",
    start: bool = True,
    workspace: str | None = None,
    repeats: int = 1,
) -> tuple[str, list[str]]:
    """Queue one run per freeze spec, sharing a new group id, for the background worker.

    Every run copies ``base`` (same data, split, seed and hyperparameters) and changes only
    ``freeze``; they train one after another in queue order, and the queue lives in the store,
    so it survives a page reload or a restart of the app.

    Args:
        store: the run store.
        base: the settings shared by all runs (its ``freeze`` is ignored).
        depths: freeze specs (``"head"``, ``"none"``, ``"3"``, ...; ``"0"``/``"all"`` are accepted),
            e.g. from :func:`sweep_freezes`.
        from_scratch: also queue, last, a full fine-tune from random weights (``weights="none"``),
            the baseline that shows what the pretrained weights are worth.
        label_prefix: put before each run's label (``"freeze=<spec>"`` / ``"from scratch"``).
        start: start the worker process (False only queues; tests use it).
        workspace: the workspace that owns the runs (see :mod:`tl_dashboard.workspaces`).
        repeats: runs per depth, with seeds ``base.seed .. base.seed + repeats - 1`` (a new split
            and head init each); the sweep chart plots their mean with a 95% error bar.

    Returns:
        ``(group_id, run_ids)`` with the ids in queue order.

    Raises:
        ValueError: nothing to queue.
    """
    freezes = list(dict.fromkeys(normalize_freeze(d) for d in depths if str(d).strip()))
    if not freezes and not from_scratch:
        raise CompareError("queue_sweep: no freeze depths given; pass e.g. ['head', '4', 'none'].")
    group = time.strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    seeds = [base.seed + r for r in range(max(1, int(repeats)))]
    tag = (lambda sd: f" seed={sd}") if len(seeds) > 1 else (lambda sd: "")
    ids = [
        worker.submit_run(
            store,
            replace(base, freeze=f, seed=sd),
            label=f"{label_prefix}freeze={f}{tag(sd)}",
            group_id=group,
            start=False,
            workspace=workspace,
        )
        for sd in seeds
        for f in freezes
    ]
    if from_scratch:
        ids += [
            worker.submit_run(
                store,
                replace(base, freeze="none", weights="none", seed=sd),
                label=f"{label_prefix}from scratch{tag(sd)}",
                group_id=group,
                start=False,
                workspace=workspace,
            )
            for sd in seeds
        ]
    if start:
        worker.start_worker(store)
    return group, ids


def list_sweeps(store: RunStore) -> list[dict[str, Any]]:
    """The sweeps (run groups) in the store, newest first.

    Returns:
        ``{"group_id", "created", "runs" (count), "counts" ({status: n}), "active" (bool),
        "model", "data_dir"}`` per group.
    """
    groups: dict[str, dict[str, Any]] = {}
    for r in store.list_runs():
        gid = r.get("group_id")
        if not gid:
            continue
        g = groups.setdefault(
            gid,
            {
                "group_id": gid,
                "created": r["created"],
                "runs": 0,
                "counts": {},
                "active": False,
                "model": (r.get("config") or {}).get("model"),
                "data_dir": (r.get("config") or {}).get("data_dir"),
            },
        )
        g["created"] = min(g["created"], r["created"])
        g["runs"] += 1
        g["counts"][r["status"]] = g["counts"].get(r["status"], 0) + 1
        g["active"] = g["active"] or r["status"] in ACTIVE_STATUSES
    return sorted(groups.values(), key=lambda g: g["created"], reverse=True)


def sweep_points(store: RunStore, group_id: str) -> list[dict[str, Any]]:
    """One point per run of a sweep, in queue order.

    Returns:
        ``{"run_id", "label", "status", "freeze", "freeze_label", "from_scratch",
        "trainable_params", "best_val_accuracy", "train_seconds", "epochs"}``; the measured
        values are None until the run has them.
    """
    out = []
    for r in reversed(store.list_runs(group_id=group_id)):
        c, s = r.get("config") or {}, r.get("summary") or {}
        out.append(
            {
                "run_id": r["id"],
                "label": r.get("label") or r["id"],
                "status": r["status"],
                "freeze": c.get("freeze"),
                "freeze_label": s.get("freeze_label") or freeze_label(c.get("freeze", "head")),
                "from_scratch": c.get("weights") == "none" or (s.get("weights") or {}).get("source") == "none",
                "trainable_params": s.get("trainable_params"),
                "best_val_accuracy": best_accuracy(s),
                "train_seconds": _total_time(r) if r["status"] not in ACTIVE_STATUSES else None,
                "epochs": s.get("epochs"),
                "seed": c.get("seed"),
                "val_images": s.get("val_images"),
                "gflops_per_epoch": s.get("gflops_per_epoch"),
                "shared_machine": s.get("shared_machine"),
            }
        )
    return out
