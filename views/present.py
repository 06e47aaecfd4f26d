"""How runs read on the pages: progress, status lines, table rows and picker titles.

Streamlit-free (plain mappings in, strings and dicts out), so it is tested without a browser.
It belongs to the UI layer: the core (``tl_dashboard``) never imports it.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from tl_dashboard.formatting import NO_EPOCH, best_accuracy, format_seconds, format_time, no_completed_epoch
from tl_dashboard.layers import freeze_label

__all__ = [
    "WEIGHT_COLOURS",
    "ACTIVE",
    "pick_current_run",
    "progress_info",
    "status_message",
    "feature_cache_note",
    "run_duration",
    "run_rows",
    "owner_text",
    "log_text",
    "default_label",
    "run_title",
]

# Badge colour per weights source (describe_backbone()["weights_source"]).
WEIGHT_COLOURS = {"bundled": "green", "hf-cache": "green", "file": "green", "hub": "blue", "none": "orange"}
ACTIVE = ("queued", "running")


def pick_current_run(runs: Sequence[Mapping[str, Any]], session_run_id: str | None) -> Mapping[str, Any] | None:
    """The run the Train page shows: newest active run, else this session's last, else the newest.

    ``runs`` is ``RunStore.list_runs()`` (newest first). Every browser and every reload makes the
    same choice from the store, so a live run is never lost by leaving the page.
    """
    for r in runs:
        if r.get("status") in ACTIVE:
            return r
    if session_run_id:
        for r in runs:
            if r.get("id") == session_run_id:
                return r
    return runs[0] if runs else None


def _epoch_seconds(steps: Sequence[Mapping[str, Any]]) -> float | None:
    """Wall seconds per epoch between the last steps of two completed epochs: training and validation
    both, and nothing of the data loading or feature cache that came before epoch 1."""
    ends = [
        (float(r["epoch"]), float(r["time"]))
        for r in steps
        if r.get("time") is not None and float(r.get("epoch") or 0) > 0 and abs(float(r["epoch"]) - round(float(r["epoch"]))) < 1e-6
    ]
    if len(ends) >= 2 and ends[-1][0] > ends[0][0]:
        return (ends[-1][1] - ends[0][1]) / (ends[-1][0] - ends[0][0])
    return None


def _eta(
    p: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], step: int, total: int, batch_size: int | None, epochs: int = 0
) -> tuple[float | None, float | None]:
    """(seconds left, images per second) from the logged steps, never from the time since the run started
    (which includes decoding and the feature cache, paid once): per completed epoch when two epoch ends
    are known (validation counted), else per step of the current epoch; None until two steps exist."""
    ips, eta = p.get("images_per_sec"), None
    if len(steps) >= 2 and total:
        first, last = steps[max(0, len(steps) - 50)], steps[-1]
        dt, ds = float(last["time"]) - float(first["time"]), int(last["step"]) - int(first["step"])
        if ds > 0 and dt > 0:
            per_step = dt / ds
            eta = max(0.0, per_step * (total - step))
            if ips is None and batch_size:
                ips = batch_size / per_step
        per_epoch = _epoch_seconds(steps)
        if per_epoch is not None and epochs:
            eta = max(0.0, per_epoch * (epochs - float(last.get("epoch") or 0)))
    return eta, ips


def _ended_text(
    run: Mapping[str, Any], status: str | None, epochs: int, step: int, steps: Sequence[Mapping[str, Any]]
) -> tuple[float, str]:
    """(fraction, text) of a run that ended: the epochs it completed, never the one it had started."""
    s = run.get("summary") or {}
    done = s.get("epochs")
    if done is None:
        done = int(float(steps[-1].get("epoch") or 0)) if steps else 0
    auto = (s.get("auto") or {}).get("solver")
    if status == "finished":
        return 1.0, f"{done} epoch(s)" + (" (auto: one per solver iteration, until it converged)" if auto else "")
    planned = int((run.get("config") or {}).get("epochs") or 0) or epochs
    if auto or not planned:
        return 1.0 if done else 0.0, f"{status} after {done} epoch(s)"
    return min(1.0, done / planned), f"{status} after {done} of {planned} epochs"


def progress_info(
    run: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], batch_size: int | None = None, *, running_now: int = 0
) -> dict[str, Any]:
    """Progress of a run for the progress bar (``running_now``: runs training at the moment, so a
    queued run waits for them rather than for the training process to start).

    Returns:
        ``{"fraction": 0..1, "text": str, "eta": seconds or None, "images_per_sec": float or None}``.
    """
    p = run.get("progress") or {}
    status = run.get("status")
    total = int(p.get("total_steps") or 0)
    step = int(p.get("step") or (steps[-1]["step"] if steps else 0))
    epochs = int(p.get("epochs") or (run.get("config") or {}).get("epochs") or 0)
    epoch = int(p.get("epoch") or 0)
    eta, ips = _eta(p, steps, step, total, batch_size, epochs)
    fraction = 1.0 if status == "finished" else min(1.0, step / total) if total else 0.0
    if status not in ACTIVE and status not in (None, "cancelled"):
        fraction, text = _ended_text(run, status, epochs, step, steps)
        return {"fraction": fraction, "text": text, "eta": None, "images_per_sec": ips}
    parts = []
    if epochs:
        parts.append(f"epoch {max(epoch, 1) if step else epoch}/{epochs}")
    if total:
        parts.append(f"step {step}/{total}")
    if ips:
        parts.append(f"{ips:,.0f} images/s")
    if status in ACTIVE and eta is not None:
        parts.append(f"about {format_seconds(eta)} left")
    if status == "queued":
        text = "Queued: waiting for the run ahead to finish" if running_now else "Queued: waiting for the training process to start"
    elif status == "running" and not step:
        text = "Preparing: scanning the data, loading the weights, building the feature cache"
    else:
        text = " · ".join(parts) or str(status)
    return {"fraction": fraction, "text": text, "eta": eta, "images_per_sec": ips}


def _finished_text(s: Mapping[str, Any]) -> str:
    acc, best = s.get("val_accuracy"), s.get("best_val_accuracy")
    bits = []
    if acc is not None:
        bits.append(f"final validation accuracy {acc:.1%}")
    if best is not None:
        bits.append(f"best {best:.1%}")
    if s.get("train_seconds") is not None:
        bits.append(f"in {format_seconds(s['train_seconds'])}")
    return ", ".join(bits) or "done"


def status_message(run: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, text) for the run's state; kind is one of info, success, warning, error."""
    status = run.get("status")
    s = run.get("summary") or {}
    err = run.get("error") or ""
    name = run.get("label") or run.get("id")
    n = s.get("epochs")
    messages = {
        "queued": ("info", f"Run {name} is queued; it starts as soon as the training process is up."),
        "running": ("info", f"Run {name} is training in a background process. You can leave this page; it keeps going."),
        "finished": ("success", f"Run {name} finished: {_finished_text(s)}."),
        "stopped": (
            "warning",
            f"Run {name} was stopped on request"
            + (
                " before its first epoch completed, so no model was kept; start it again."
                if n == 0
                else f" after {n} epoch(s)."
                if n is not None
                else "."
            ),
        ),
        "failed": ("error", f"Run {name} failed: {err or 'no error message was recorded'}"),
        "interrupted": ("warning", f"Run {name} was interrupted: {err or 'its training process died'}."),
        "cancelled": ("info", f"Run {name} was cancelled before it started."),
    }
    return messages.get(status, ("info", f"Run {name}: {status}"))


def feature_cache_note(summary: Mapping[str, Any]) -> str | None:
    """One sentence on whether the frozen-prefix feature cache was used, and why not."""
    fc = (summary or {}).get("feature_cache")
    if not fc:
        return None
    if fc.get("used"):
        k = fc.get("frozen_prefix_blocks")
        bits = [
            f"{fc['estimated_mb']} MB" if fc.get("estimated_mb") is not None else "",
            f"built in {float(fc['build_seconds']):.1f} s" if fc.get("build_seconds") is not None else "",
        ]
        extra = ", ".join(b for b in bits if b)
        return (
            f"Feature cache on: the {k} frozen block(s) ran once per image"
            f"{f' ({extra})' if extra else ''}; each epoch only trains the rest, so epochs are fast."
        )
    reason = fc.get("reason") or "not possible for this plan"
    return f"Feature cache off: {reason}. Every epoch runs the whole network."


def run_duration(run: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds from start to finish (or to now while running)."""
    start = run.get("started")
    if not start:
        return None
    end = run.get("finished") or (now or time.time() if run.get("status") in ACTIVE else None)
    return None if end is None else max(0.0, float(end) - float(start))


def _plan_label(run: Mapping[str, Any]) -> str:
    s, c = run.get("summary") or {}, run.get("config") or {}
    return str(s.get("freeze_label") or freeze_label(c.get("freeze", "head")))


def owner_text(run: Mapping[str, Any], me: str | None, names: Mapping[str, str] | None = None) -> str:
    """Whose run: 'you', the owner's display name, 'someone' or '-' (no owner: made before workspaces)."""
    ws = run.get("workspace")
    if not ws:
        return "-"
    if ws == me:
        return "you"
    return (names or {}).get(ws) or "someone"


def run_rows(
    runs: Sequence[Mapping[str, Any]], now: float | None = None, *, me: str | None = None, names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One display row per run for the Runs table (``me``: this visitor's workspace id)."""
    from tl_dashboard.datasets import dataset_label

    rows = []
    for r in runs:
        c, s = r.get("config") or {}, r.get("summary") or {}
        best = best_accuracy(s)
        dur = run_duration(r, now)
        rows.append(
            {
                "status": r.get("status"),
                "label": r.get("label") or "",
                "owner": owner_text(r, me, names),
                "data set": dataset_label(r),
                "model": c.get("model", ""),
                "freeze plan": _plan_label(r),
                "trainable params": s.get("trainable_params"),
                "best val acc": None if best is None else round(100 * float(best), 1),
                "95% interval": NO_EPOCH if no_completed_epoch(s) else _interval_text(best, s.get("val_images")),
                "duration": format_seconds(dur) if dur is not None else "",
                "created": format_time(r.get("created"), short=True),
                "id": r.get("id"),
            }
        )
    return rows


def _interval_text(acc: Any, n: Any) -> str:
    """'86-100% (n=36)': the Wilson interval of a best accuracy and its image count."""
    from tl_dashboard.stats import accuracy_interval

    if acc is None or not n:
        return ""
    lo, hi = accuracy_interval(float(acc), int(n))
    return f"{lo * 100:.0f}-{hi * 100:.0f}% (n={int(n)})"


def log_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """A run's log (``RunStore.logs``) as plain lines: time, level, message."""
    return "\n".join(f"{format_time(r['time'])} {r['level']:5} {r['message']}" for r in rows) or "(empty)"


def default_label(state: Mapping[str, Any]) -> str:
    """A short label for a run from the current choices, e.g. 'efficientnet_lite0 · head only'."""
    return f"{state.get('model')} · {freeze_label(state.get('freeze', 'head')).split(' (')[0]}"


def run_title(run: Mapping[str, Any], *, accuracy: bool = False) -> str:
    """One line naming a run in a picker: label (or id), model and plan unless the label already
    says them, status unless finished, best accuracy if asked, and when it was created."""
    cfg, summ = run.get("config") or {}, run.get("summary") or {}
    name = str(run.get("label") or run["id"])
    parts = [name]
    model = str(cfg.get("model", "?"))
    plan = _plan_label(run).split(" (")[0]
    if model not in name:
        parts.append(model)
    if plan not in name:
        parts.append(plan)
    data_name = str((run.get("dataset") or {}).get("name") or "")
    if data_name and data_name not in name:
        parts.append(data_name)
    if run.get("status") and run["status"] != "finished":
        parts.append(str(run["status"]))
    best = best_accuracy(summ)
    if accuracy and no_completed_epoch(summ):
        parts.append(NO_EPOCH)
    elif accuracy and best is not None:
        parts.append(f"best val acc {best:.1%}")
    parts.append(format_time(run.get("created"), short=True))
    return " · ".join(parts)
