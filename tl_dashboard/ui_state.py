"""Pure-Python helpers for the Streamlit pages: the one set of session keys, and small formatters.

The pages keep their choices in ``st.session_state`` under the *canonical* keys of
:data:`DEFAULTS` (``data_dir``, ``model``, ``freeze``, ...). Widgets never own those keys:
Streamlit drops a widget's state when the page that draws it is not rendered, so each widget
gets its own key (``w_<name>``), is filled from the canonical value before it is drawn, and
copies its value back on change. :func:`bind` returns exactly those widget arguments::

    ss = st.session_state
    st.number_input("Epochs", 1, 500, **ui_state.bind(ss, "epochs"))

Everything here takes a plain ``MutableMapping`` (``st.session_state`` is one), so it is tested
without Streamlit and never imports it.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from .engine import TrainConfig
from .layers import FreezePlan

__all__ = [
    "DEFAULTS", "WIDGET_PREFIX", "WEIGHT_COLOURS", "require_router", "use_sample", "SOURCES", "PRESETS", "sample_data_dir", "init_state", "bind", "commit",
    "config_from_state", "freeze_label", "preset_of", "spec_from_frozen", "frozen_from_spec",
    "class_folder_count", "folder_signature", "data_warnings", "pick_current_run", "progress_info",
    "status_message", "feature_cache_note", "run_rows", "run_duration", "format_params",
    "format_seconds", "format_time", "default_label", "safe_name", "run_title",
]

WIDGET_PREFIX = "w_"

# Where the data comes from on the Data page.
SOURCES = {
    "sample": "Sample set",
    "folder": "Folder on this server",
    "upload": "Upload",
    "build": "Build your own",
}

# Freeze presets on the Model page, keyed by what preset_of() returns.
PRESETS = {
    "head": "Linear probe (head only)",
    "first": "Freeze first N",
    "none": "Full fine-tune",
    "custom": "Custom",
}


def sample_data_dir() -> Path:
    """The bundled emoji sample set: next to the package in a checkout, else under the working dir."""
    here = Path(__file__).resolve().parent.parent / "sample_data" / "emoji3"
    cwd = Path.cwd() / "sample_data" / "emoji3"
    return here if here.is_dir() or not cwd.is_dir() else cwd


# Badge colour per weights source (describe_backbone()["weights_source"]).
WEIGHT_COLOURS = {"bundled": "green", "hf-cache": "green", "file": "green", "hub": "blue", "none": "orange"}


def _defaults() -> dict[str, Any]:
    cfg = TrainConfig(data_dir=str(sample_data_dir()))
    d = cfg.to_dict()
    d.update(
        data_source="sample",  # how the data was chosen (see SOURCES)
        run_label="",  # optional label for the next run
        run_id=None,  # the last run this session started (the store stays the truth)
        builder_dir=None,  # folder of the "build your own" data set being made
        first_n=3,  # the N of the "first N blocks" preset
        model_query="",  # search box over all timm names
    )
    return d


DEFAULTS: dict[str, Any] = _defaults()


def init_state(state: MutableMapping[str, Any]) -> None:
    """Put every canonical key that is missing into ``state`` with its default."""
    for k, v in DEFAULTS.items():
        if k not in state:
            state[k] = v


def require_router(state: MutableMapping[str, Any], page: str, switch_page: Callable[[str], Any]) -> None:
    """Send a page opened without the router (``app.py``) through it, then back to ``page``.

    Streamlit runs ``pages/x.py`` directly when it is the very first request a fresh server gets
    (its old pages-folder mode, before any ``st.navigation`` call), so ``app.py`` has not set
    up the state yet. Call at the top of every page with ``st.switch_page``.
    """
    if "data_dir" not in state:
        state["_deep_link"] = page
        switch_page("app.py")


def use_sample(state: MutableMapping[str, Any]) -> None:
    """The quick start: sample data, the default model with its bundled weights, a linear probe."""
    for k in ("data_source", "data_dir", "model", "weights", "freeze", "bn_mode"):
        state[k] = DEFAULTS[k]


def commit(state: MutableMapping[str, Any], name: str) -> None:
    """on_change callback: copy the widget's value back into the canonical key."""
    state[name] = state[WIDGET_PREFIX + name]


def bind(state: MutableMapping[str, Any], name: str,
         after: Callable[[], None] | None = None) -> dict[str, Any]:
    """Widget kwargs for canonical key ``name``: ``key``, ``on_change`` and ``args``.

    The widget key is set from the canonical value first, so the widget shows the current
    choice even after another page changed it or after Streamlit dropped the widget's state.
    ``after`` runs (no arguments) after the value was copied back.
    """
    wkey = WIDGET_PREFIX + name
    state[wkey] = state[name]

    def _changed(state: MutableMapping[str, Any] = state) -> None:
        commit(state, name)
        if after is not None:
            after()

    return {"key": wkey, "on_change": _changed}


def config_from_state(state: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` the Train page would submit, from the canonical keys."""
    init = {k: state.get(k, DEFAULTS.get(k)) for k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig.from_dict(init)
    cfg.data_dir = str(cfg.data_dir)
    cfg.epochs, cfg.batch_size, cfg.image_size, cfg.seed = (
        int(cfg.epochs), int(cfg.batch_size), int(cfg.image_size), int(cfg.seed))
    cfg.lr, cfg.weight_decay, cfg.val_fraction = float(cfg.lr), float(cfg.weight_decay), float(cfg.val_fraction)
    cfg.augment = bool(cfg.augment)
    return cfg


# -- freezing ---------------------------------------------------------------------------------
def freeze_label(spec: str) -> str:
    """Human label of a freeze spec ("head only (linear probe)", "first 3 blocks frozen", ...)."""
    return FreezePlan([], str(spec)).label


def _body(blocks: Sequence[Any]) -> list[str]:
    return [_get(b, "name") for b in blocks if _get(b, "kind") != "head"]


def _get(obj: Any, attr: str, default: Any = None) -> Any:
    return obj.get(attr, default) if isinstance(obj, Mapping) else getattr(obj, attr, default)


def preset_of(spec: str, blocks: Sequence[Any] | None = None) -> str:
    """Which preset a spec belongs to: ``head``, ``first``, ``none`` or ``custom``."""
    spec = str(spec).strip()
    if spec in ("head", "all", "linear"):
        return "head"
    if spec in ("none", "0", ""):
        return "none"
    if spec.isdigit():
        if blocks is not None and int(spec) >= len(_body(blocks)):
            return "head"
        return "first"
    return "custom"


def frozen_from_spec(spec: str, blocks: Sequence[Any]) -> list[str]:
    """The frozen block names a spec means for these blocks (unknown names are dropped)."""
    body = _body(blocks)
    kind = preset_of(spec, blocks)
    if kind == "head":
        return body
    if kind == "none":
        return []
    if kind == "first":
        return body[: int(spec)]
    names = {s.strip() for s in str(spec).split(",")}
    return [n for n in body if n in names]


def spec_from_frozen(blocks: Sequence[Any], frozen: Sequence[str]) -> str:
    """The shortest spec for a set of frozen blocks: ``head``, ``none``, ``N`` or ``a,b``."""
    body = _body(blocks)
    chosen = [n for n in body if n in set(frozen)]
    if not chosen:
        return "none"
    if len(chosen) == len(body):
        return "head"
    if chosen == body[: len(chosen)]:
        return str(len(chosen))
    return ",".join(chosen)


# -- data -------------------------------------------------------------------------------------
def _visible_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder)
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name != "__MACOSX")
    except OSError:
        return []


def class_folder_count(data_dir: str | Path) -> int:
    """Number of class sub-folders (cheap, no image checks); pre-split folders count train/'s classes."""
    root = Path(data_dir)
    top = _visible_dirs(root)
    if {"train", "val"} <= set(top):
        return len(set(_visible_dirs(root / "train")) | set(_visible_dirs(root / "val")))
    return len(top)


def folder_signature(data_dir: str | Path) -> tuple[int, int, int]:
    """(files, total bytes, newest mtime_ns) under a folder: changes when images are added or edited.

    Used as a cache key so a scan is redone after an upload but not on every rerun.
    """
    n = size = newest = 0
    for dirpath, dirnames, filenames in os.walk(data_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        try:
            newest = max(newest, os.stat(dirpath).st_mtime_ns)
        except OSError:
            pass
        for f in filenames:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


def data_warnings(counts: Mapping[str, Mapping[str, int]], *, imbalance: float = 3.0,
                  min_images: int = 5) -> list[str]:
    """Plain-language warnings about class imbalance and classes too small to validate.

    Args:
        counts: ``{class: {"train": n, "val": n}}`` as ``DatasetSplit.counts()`` returns it.
        imbalance: warn when the largest class has more than this many times the smallest.
        min_images: warn about classes with fewer images in total.
    """
    totals = {c: int(v.get("train", 0)) + int(v.get("val", 0)) for c, v in counts.items()}
    out: list[str] = []
    if len(totals) >= 2:
        big = max(totals, key=totals.get)
        small = min(totals, key=totals.get)
        if totals[small] > 0 and totals[big] / totals[small] > imbalance:
            out.append(
                f"Class imbalance: '{big}' has {totals[big]} images but '{small}' only {totals[small]} "
                f"({totals[big] / totals[small]:.1f}x). The model may learn to favour '{big}'; "
                f"add images to '{small}' or remove some from '{big}'.")
    tiny = [c for c, n in totals.items() if n < min_images]
    if tiny:
        names = ", ".join(f"'{c}' ({totals[c]})" for c in tiny)
        out.append(
            f"Too few images to validate: {names}. With fewer than {min_images} images a class gets "
            "1 validation image, so its accuracy is all-or-nothing; add more images.")
    return out


def safe_name(text: str, fallback: str = "dataset") -> str:
    """A folder-safe name: letters, digits, '-' and '_' only."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text).strip())
    cleaned = cleaned.strip("_")[:60]
    return cleaned or fallback


# -- runs -------------------------------------------------------------------------------------
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


def progress_info(run: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], batch_size: int | None = None,
                  now: float | None = None) -> dict[str, Any]:
    """Progress of a run for the progress bar.

    Returns:
        ``{"fraction": 0..1, "text": str, "eta": seconds or None, "images_per_sec": float or None}``.
    """
    p = run.get("progress") or {}
    status = run.get("status")
    total = int(p.get("total_steps") or 0)
    step = int(p.get("step") or (steps[-1]["step"] if steps else 0))
    epochs = int(p.get("epochs") or (run.get("config") or {}).get("epochs") or 0)
    epoch = int(p.get("epoch") or 0)
    ips = p.get("images_per_sec")
    eta = None
    if len(steps) >= 2 and total:
        first, last = steps[max(0, len(steps) - 50)], steps[-1]
        dt, ds = float(last["time"]) - float(first["time"]), int(last["step"]) - int(first["step"])
        if ds > 0 and dt > 0:
            per_step = dt / ds
            eta = max(0.0, per_step * (total - step))
            if ips is None and batch_size:
                ips = batch_size / per_step
    elif step and total and p.get("elapsed"):
        eta = float(p["elapsed"]) / step * (total - step)
    if status in ("finished",):
        fraction = 1.0
    else:
        fraction = min(1.0, step / total) if total else 0.0
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
        text = "Queued: waiting for the training process to start"
    elif status == "running" and not step:
        text = "Preparing: scanning the data, loading the weights, building the feature cache"
    else:
        text = " · ".join(parts) or str(status)
    return {"fraction": fraction, "text": text, "eta": eta, "images_per_sec": ips}


def status_message(run: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, text) for the run's state; kind is one of info, success, warning, error."""
    status = run.get("status")
    s = run.get("summary") or {}
    err = run.get("error") or ""
    name = run.get("label") or run.get("id")
    if status == "queued":
        return "info", f"Run {name} is queued; it starts as soon as the training process is up."
    if status == "running":
        return "info", f"Run {name} is training in a background process. You can leave this page; it keeps going."
    if status == "finished":
        acc, best = s.get("val_accuracy"), s.get("best_val_accuracy")
        bits = []
        if acc is not None:
            bits.append(f"final validation accuracy {acc:.1%}")
        if best is not None:
            bits.append(f"best {best:.1%}")
        if s.get("train_seconds") is not None:
            bits.append(f"in {format_seconds(s['train_seconds'])}")
        return "success", f"Run {name} finished: " + (", ".join(bits) or "done") + "."
    if status == "stopped":
        n = s.get("epochs")
        return "warning", f"Run {name} was stopped on request" + (f" after {n} epoch(s)." if n is not None else ".")
    if status == "failed":
        return "error", f"Run {name} failed: {err or 'no error message was recorded'}"
    if status == "interrupted":
        return "warning", f"Run {name} was interrupted: {err or 'its training process died'}."
    if status == "cancelled":
        return "info", f"Run {name} was cancelled before it started."
    return "info", f"Run {name}: {status}"


def feature_cache_note(summary: Mapping[str, Any]) -> str | None:
    """One sentence on whether the frozen-prefix feature cache was used, and why not."""
    fc = (summary or {}).get("feature_cache")
    if not fc:
        return None
    if fc.get("used"):
        k = fc.get("frozen_prefix_blocks")
        bits = [f"{fc['estimated_mb']} MB" if fc.get("estimated_mb") is not None else "",
                f"built in {float(fc['build_seconds']):.1f} s" if fc.get("build_seconds") is not None else ""]
        extra = ", ".join(b for b in bits if b)
        return (f"Feature cache on: the {k} frozen block(s) ran once per image"
                f"{f' ({extra})' if extra else ''}; each epoch only trains the rest, so epochs are fast.")
    reason = fc.get("reason") or "not possible for this plan"
    return f"Feature cache off: {reason}. Every epoch runs the whole network."


def run_duration(run: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds from start to finish (or to now while running)."""
    start = run.get("started")
    if not start:
        return None
    end = run.get("finished") or (now or time.time() if run.get("status") in ACTIVE else None)
    return None if end is None else max(0.0, float(end) - float(start))


def run_rows(runs: Sequence[Mapping[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """One display row per run for the Runs table."""
    rows = []
    for r in runs:
        c, s = r.get("config") or {}, r.get("summary") or {}
        best = s.get("best_val_accuracy")
        dur = run_duration(r, now)
        rows.append({
            "status": r.get("status"),
            "label": r.get("label") or "",
            "model": c.get("model", ""),
            "freeze plan": s.get("freeze_label") or freeze_label(c.get("freeze", "head")),
            "trainable params": s.get("trainable_params"),
            "best val acc": None if best is None else round(100 * float(best), 1),
            "duration": format_seconds(dur) if dur is not None else "",
            "created": format_time(r.get("created"))[5:16],  # "MM-DD HH:MM"
            "id": r.get("id"),
        })
    return rows


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
    plan = str(summ.get("freeze_label") or freeze_label(str(cfg.get("freeze", "head")))).split(" (")[0]
    if model not in name:
        parts.append(model)
    if plan not in name:
        parts.append(plan)
    if run.get("status") and run["status"] != "finished":
        parts.append(str(run["status"]))
    best = summ.get("best_val_accuracy")
    if accuracy and isinstance(best, (int, float)):
        parts.append(f"best val acc {best:.1%}")
    parts.append(format_time(run.get("created"))[5:16])
    return " · ".join(parts)


# -- formatting -------------------------------------------------------------------------------
def format_params(n: int | float | None) -> str:
    """1234 -> '1.2 k', 4_700_000 -> '4.70 M'."""
    if n is None:
        return "-"
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return f"{int(n)}"


def format_seconds(s: float | None) -> str:
    """Seconds as '7 s', '2m 05s', '1h 03m' (short enough for a metric)."""
    if s is None or not math.isfinite(float(s)):
        return "-"
    s = int(round(float(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def format_time(t: float | None) -> str:
    """Epoch seconds as local 'YYYY-MM-DD HH:MM:SS'."""
    return "" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))
