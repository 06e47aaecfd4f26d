"""Train: hyperparameters, Start and Stop, and the current run live from the run store."""

from pathlib import Path

import streamlit as st

from tl_dashboard import auto_head, compare, data, fairqueue, layers, liveview, stats, workspaces
from tl_dashboard import formatting as fmt
from tl_dashboard import ui_state as ui
from tl_dashboard.backbones import describe_backbone
from tl_dashboard.configcheck import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from tl_dashboard.engine import TrainConfig, available_devices
from tl_dashboard.layers import describe_blocks
from tl_dashboard.runs import ACTIVE_STATUSES, RunStore
from tl_dashboard.worker import reap
from views import present, review, widgets, workspace
from views import quality as quality_views


def cache_line() -> str:
    """Decoded images and frozen features are kept on disk between runs: where, and how much."""
    from tl_dashboard import cache

    u = cache.usage()
    return (
        f"Kept between runs (a second run or a sweep at the same depth skips decoding and the frozen blocks): "
        f"{cache.human_bytes(u['bytes'])} in `{u['path']}`, bound {cache.human_bytes(u['max_bytes'])} (TL_CACHE_MAX_GB)."
    )


ss = st.session_state
ui.require_router(ss, "pages/train.py", st.switch_page, st.query_params.to_dict())
store = RunStore()
ws_id, admin_pw = workspace.me(ss)
LRS = [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # 0 = auto


def config() -> TrainConfig | None:
    """The run the choices describe, or None (and a message) when its data folder is gone."""
    cfg = ui.config_from_state(ss)
    if not Path(cfg.data_dir).is_dir():
        widgets.flash("train", "error", f"Data folder not found: {cfg.data_dir}. Choose the data on the Data page.")
        return None
    return cfg


def auto_image_size() -> int | None:
    """The input size auto picks for the chosen model (from its weights' config), or None if unknown."""
    from dataclasses import replace

    from tl_dashboard.augment_preview import input_sizes

    try:
        return input_sizes(replace(ui.config_from_state(ss), image_size=0))[0]
    except Exception:  # an unknown model name: the Model page says so
        return None


def auto_epochs_text() -> str:
    """What epochs auto does with the current choices (auto_head.resolve's rule, in words)."""
    solver = (
        not ss.lr
        and ss.freeze == "head"
        and not ss.augment
        and ss.feature_cache != "off"
        and not ss.unfreeze_at
        and int(ss.get("nproc") or 1) == 1
    )
    return "until the head's fit converges" if solver else f"{auto_head.FALLBACK_EPOCHS} epochs"


def clock(seconds: float | None) -> str:
    """Elapsed time as a clock, short enough for a narrow metric: '0:42', '1:12', '1:03:05'."""
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def start() -> None:
    cfg = config()
    with widgets.reported("Not started", page="train"):  # QueueFull on a shared server
        if cfg is not None:
            ss.run_id = workspaces.submit(
                store, cfg, ws_id, label=ss.run_label.strip() or present.default_label(ss), admin_password=admin_pw
            )


def start_sweep(depths: list[str]) -> None:
    cfg = config()
    with widgets.reported("Not queued", page="train"):
        if cfg is not None:
            _group, ids = workspaces.submit_sweep(store, cfg, depths, ws_id, label_prefix="sweep ", admin_password=admin_pw)
            ss.run_id = ids[0]
            widgets.flash(
                "train",
                "success",
                f"Queued {len(ids)} runs "
                f"({', '.join(layers.freeze_label(d) for d in depths)}). "
                "They train one after another; compare them on the Compare page.",
            )


def stop(run_id: str) -> None:
    with widgets.reported("Not stopped", page="train"):  # checked in the core: your own runs, or the teacher
        status = workspaces.stop_run(store, run_id, ws_id, admin_pw)
        widgets.flash("train", "info", "Stopping after the current batch…" if status == "running" else f"Run {status}.")


reap(store)
mine = workspaces.list_runs(store, ws_id, mine=True)  # the Train page shows YOUR runs only
running_mine = [r for r in mine if r["status"] == "running"]
current = running_mine[0] if running_mine else present.pick_current_run(mine, ss.run_id)
active = bool(current and current["status"] in ACTIVE_STATUSES)
any_queued = any(r["status"] == "queued" for r in mine)

st.title("Train")
settings, live = st.columns([2, 3], gap="large")

# -- settings ----------------------------------------------------------------------------------
with settings:
    with st.container(border=True):
        st.markdown("**Your choices**")
        weights = (
            describe_backbone(ss.model)
            if ss.weights == "auto"
            else {"weights_source": "none", "weights_text": "random init (chosen on the Model page)"}
        )
        st.markdown(
            f"Data: **{Path(ss.data_dir).name}** ({data.class_folder_count(ss.data_dir)} classes)  \n"
            f"Model: **{ss.model}** :{present.WEIGHT_COLOURS.get(weights['weights_source'], 'gray')}-badge"
            f"[{weights['weights_source']}]  \n"
            f"Freeze plan: **{layers.freeze_label(ss.freeze)}** · BatchNorm {ss.bn_mode}"
        )
        l1, l2 = st.columns(2)
        l1.page_link("pages/data.py", label="Change data", icon=":material/photo_library:")
        l2.page_link("pages/model.py", label="Change model", icon=":material/account_tree:")

    b1, b2 = st.columns(2)
    data_ok = data.class_folder_count(ss.data_dir) >= 2
    if not data_ok:
        st.error(f"The data folder {ss.data_dir} has fewer than two class folders. Choose the data on the Data page.")
    b1.button(
        "Start training",
        type="primary",
        icon=":material/play_arrow:",
        disabled=not data_ok,
        on_click=start,
        key="start_training",
        width="stretch",
        help="Queues a run with these choices; runs of everyone on this server take turns.",
    )
    b2.button(
        "Stop" if not current or current["status"] != "queued" else "Cancel",
        icon=":material/stop:",
        disabled=not active,
        key="stop_training",
        width="stretch",
        on_click=stop,
        args=(current["id"] if current else "",),
    )
    if active:
        st.caption("Your run is in progress; Start queues another one after it.")
    widgets.show_flash("train")

    st.markdown("**Hyperparameters**")
    h1, h2 = st.columns(2)
    widgets.auto_number(
        h1,
        "Epochs",
        "epochs",
        1,
        500,
        placeholder="auto",
        help="Empty = auto. With the learning rate auto too and only the head training on cached "
        "features, an L-BFGS fit of the head runs until it converges (each solver iteration is "
        f"shown as one epoch, at most {auto_head.MAX_ITER}); otherwise "
        f"{auto_head.FALLBACK_EPOCHS} epochs.",
    )
    if not ss.epochs:
        h1.caption(f"auto → {auto_epochs_text()}")
    h2.number_input("Batch size", 1, 1024, step=8, **ui.bind(ss, "batch_size"))
    if ss.lr not in LRS:
        LRS = sorted({*LRS, float(ss.lr)})
    st.select_slider(
        "Learning rate",
        LRS,
        format_func=lambda v: f"{v:g}" if v else "auto",
        help="AdamW, decayed along a cosine to 1% of this by the last step. auto with epochs auto and "
        "head only: a cross-validated L-BFGS fit of the head instead (no learning rate); "
        "otherwise 1e-3. The finder below suggests one for your settings.",
        **ui.bind(ss, "lr"),
    )
    quality_views.lr_finder_panel(ss)
    h3, h4 = st.columns(2)
    h3.number_input("Weight decay", 0.0, 1.0, step=0.01, format="%.3f", **ui.bind(ss, "weight_decay"))
    auto_px = auto_image_size()
    widgets.auto_number(
        h4,
        "Image size (px)",
        "image_size",
        MIN_IMAGE_SIZE,
        MAX_IMAGE_SIZE,
        step=16,
        placeholder="auto",
        help="Empty = auto: the size the weights were trained at" + (f" ({auto_px} px for {ss.model})." if auto_px else " (224 for most)."),
    )
    if not ss.image_size and auto_px:
        h4.caption(f"auto → {auto_px} px (the weights')")
    h5, h6 = st.columns(2)
    h5.number_input("Seed", 0, 2**31 - 1, step=1, help="Same seed, same data, same settings: the same numbers.", **ui.bind(ss, "seed"))
    h6.text_input("Run label (optional)", placeholder=present.default_label(ss), **ui.bind(ss, "run_label"))
    st.toggle("Augmentation (random crop, flip, colour jitter)", **ui.bind(ss, "augment"))
    review.augmentation_panel(ui.config_from_state(ss))  # what the network will see, drawn on open
    st.radio(
        "Feature cache", ["auto", "off"], horizontal=True, format_func={"auto": "auto", "off": "off"}.get, **ui.bind(ss, "feature_cache")
    )
    st.caption(
        "Frozen blocks give the same output every epoch, so with *auto* they run once per image and only "
        "the trainable rest runs each epoch (much faster). It cannot be used with augmentation or "
        "BatchNorm set to train."
    )
    st.caption(cache_line())
    with st.expander("Unfreeze schedule (optional): start frozen, unfreeze the last blocks later"):
        st.caption(
            "Train the head first, then let the top of the backbone adapt too, with a smaller learning "
            "rate so the pretrained features are nudged, not overwritten (discriminative learning rate). "
            "The moment shows as a dashed line on the curves."
        )
        on = st.toggle("Use an unfreeze schedule", value=ss.unfreeze_at > 0, key="unfreeze_on")
        if on:
            u1, u2, u3 = st.columns(3)
            n_ep = int(ss.epochs) or 10  # epochs auto with a schedule: 10
            ss.unfreeze_at = min(max(2, int(ss.unfreeze_at or max(2, n_ep // 2))), max(2, n_ep))
            u1.number_input("At epoch", 2, max(2, n_ep), step=1, **ui.bind(ss, "unfreeze_at"))
            u2.number_input("Last N frozen blocks", 1, 50, step=1, **ui.bind(ss, "unfreeze_blocks"))
            u3.select_slider("Their LR × ", [0.01, 0.03, 0.1, 0.3, 1.0], **ui.bind(ss, "backbone_lr_scale"))
            if ss.freeze == "none":
                st.warning("Nothing is frozen (full fine-tune), so there is nothing to unfreeze. Pick a freeze plan on the Model page.")
        else:
            ss.unfreeze_at = 0
    devices = available_devices()
    d1, d2 = st.columns(2)
    if ss.device not in devices["choices"]:
        ss.device = "auto"
    d1.selectbox("Device", devices["choices"], help=f"auto = {devices['auto']} here (CUDA, then MPS, then CPU).", **ui.bind(ss, "device"))
    if devices["cuda_count"] > 1:
        d2.number_input(
            "GPU processes",
            1,
            devices["cuda_count"],
            step=1,
            help="More than 1: DistributedDataParallel via torchrun, one process per GPU.",
            **ui.bind(ss, "nproc"),
        )
    else:
        ss.nproc = 1
        d2.caption(f"Training on **{devices['auto']}**" + (f" ({', '.join(devices['gpu_names'])})" if devices["gpu_names"] else ""))

    with st.expander("Freeze-depth sweep: one run per depth, same data, split and seed"):
        n_body = 0
        with widgets.reported(f"No sweep for {ss.model}"):
            n_body = sum(b.kind != "head" for b in describe_blocks(ss.model, None))
        if n_body:
            default = ",".join(dict.fromkeys(["0", str(n_body // 3), str(2 * n_body // 3), "all"]))
            spec = st.text_input(
                "Frozen blocks per run (0 = full fine-tune, all = head only)",
                default,
                key="sweep_depths",
                help=f"{ss.model} has {n_body} freezable blocks below the head.",
            )
            depths = []
            with widgets.reported("Not a sweep"):
                depths = compare.sweep_freezes(spec, n_body)
            st.caption(f"{len(depths)} runs with the hyperparameters above: " + ", ".join(layers.freeze_label(d) for d in depths))
            st.button(
                "Queue the sweep", icon=":material/stacks:", key="queue_sweep", disabled=not depths, on_click=start_sweep, args=(depths,)
            )
            st.page_link("pages/compare.py", label="See the sweep chart on Compare", icon=":material/compare:")


# -- the current run, live -----------------------------------------------------------------------
# While a run is live the page polls the store: status and numbers every 2 s, the curves every 4 s
# (longer when more than ten sessions share the server: widgets.pace). Everyone watching a run
# shares one read of it and one build of its figures (liveview).
# The browser redrawing two plotly charts is what costs the training process CPU on a small machine
# (benchmarks/bench_ui.py: dashboard within 10% of the CLI's speed on 2 cores).
@widgets.live_fragment(active)
def show_status(run_id: str) -> bool | None:
    if active:
        reap(store, at_most_every=5.0)  # one check for dead workers per server every 5 s, not one per tab
    view = liveview.run_view(store, run_id, max_age=widgets.view_age())  # shared by everyone watching
    if view is None:
        st.info("This run was deleted.")
        return None
    run, steps, epochs = view.run, view.steps, view.epochs
    kind, text = present.status_message(run)
    getattr(st, kind)(text)
    prog = present.progress_info(
        run, steps, (run["config"] or {}).get("batch_size"), running_now=len(store.list_runs("running")) if run["status"] == "queued" else 0
    )
    st.progress(prog["fraction"], text=prog["text"])
    last = epochs[-1] if epochs else {}
    m = st.columns(4)
    m[0].metric("Val accuracy", f"{last['val_acc']:.1%}" if last else "-")
    s_best = (run["summary"] or {}).get("best_val_accuracy")
    best = (
        s_best if s_best is not None and run["status"] not in ACTIVE_STATUSES else (max(e["val_acc"] for e in epochs) if epochs else None)
    )
    m[1].metric(
        "Best val",
        f"{best:.1%}" if best is not None else "-",
        help="The kept model's accuracy (the checkpoint Evaluate, Predict and Export use).",
    )
    cached = bool((run["summary"].get("feature_cache") or {}).get("used"))
    m[2].metric(
        "img/s" + (" (cached)" if cached else ""),
        f"{prog['images_per_sec']:,.0f}" if prog["images_per_sec"] else "-",
        help="Training images per second in the last epoch. With the feature cache the frozen blocks ran once "
        "before epoch 1, so this counts passes of the trainable rest over cached features."
        if cached
        else "Training images per second in the last epoch (forward and backward).",
    )
    m[3].metric("Elapsed", clock(present.run_duration(run)))
    if run["status"] in ACTIVE_STATUSES and widgets.pace(2.0) > 2.0:
        st.caption(
            f"Updating every {widgets.pace(2.0):.0f} s (curves every {widgets.pace(4.0):.0f} s): {widgets.sessions_here()} "
            "sessions share this server, so it polls less often and leaves the CPU to training."
        )
    n_val = (run["summary"] or {}).get("val_images")
    if best is not None and n_val:
        st.caption(
            f"Best val accuracy {stats.accuracy_text(best, n_val)}: 95% Wilson interval on {n_val} validation "
            f"images, where one image is {100 / n_val:.1f} points."
        )
    return run["status"] in ACTIVE_STATUSES  # when it ends: redraw the whole page (buttons, no more polling)


@widgets.live_fragment(active, every=4.0)
def show_curves(run_id: str) -> None:
    view = liveview.run_view(store, run_id, max_age=widgets.view_age())
    if view is None:
        return
    run = view.run
    widgets.curves(view.steps, view.epochs, run, key="live", live=run["status"] in ACTIVE_STATUSES, memo=view.memo)
    summary = run["summary"]
    note = present.feature_cache_note(summary)
    if note:
        st.caption(note)
    if summary.get("weights"):
        st.caption(
            f"Weights: {summary['weights'].get('detail')} · device {summary.get('device')} · "
            f"{summary.get('train_images')} train / {summary.get('val_images')} val images at "
            f"{summary.get('image_size')} px · {fmt.format_params(summary.get('trainable_params'))} trainable "
            f"parameters."
        )
    with st.expander("Log"):
        st.code(present.log_text(view.logs[-30:]), language=None)


@widgets.live_fragment(any_queued)
def show_queue() -> bool:
    """Your queued runs with their place in line and an estimated wait; the server's load in one line."""
    waiting = fairqueue.queue_view(store, ws_id)
    everyone = fairqueue.queue_view(store)
    n_running = len(store.list_runs("running"))
    people = len({q["workspace"] for q in everyone})
    st.caption(
        f"Server: {n_running} run(s) training (at most {fairqueue.max_running()} at once), "
        f"{len(everyone)} queued from {people} workspace(s). Queued runs take turns across people."
    )
    if not waiting:
        return False
    st.markdown("**Your queued runs**")
    labels = {r["id"]: r.get("label") or r["id"] for r in mine}
    for q in waiting:
        c1, c2 = st.columns([3, 1], vertical_alignment="center")
        wait = "starts next" if q["ahead"] == 0 else f"{q['ahead']} run(s) ahead"
        eta = (
            (" · starts after the current run" if q["ahead"] == 0 and n_running else "")
            if q["wait_s"] is None
            else f" · starts in about {fmt.format_seconds(q['wait_s'])}"
        )
        c1.markdown(f"{labels.get(q['id'], q['id'])} · place **{q['position']}** in line ({wait}){eta}")
        c2.button("Cancel", key=f"cancel_{q['id']}", icon=":material/close:", on_click=stop, args=(q["id"],), width="stretch")
    return True


def teacher_controls() -> None:
    """Every active run with a Stop button, and the per-person queue limit (teacher mode only)."""
    names = workspaces.names(store)
    with st.expander("Teacher controls: every queued or training run", expanded=True, icon=":material/school:"):
        others = store.list_runs(ACTIVE_STATUSES)
        if not others:
            st.caption("Nothing is queued or training.")
        for r in others:
            c1, c2 = st.columns([3, 1], vertical_alignment="center")
            c1.markdown(f"{r.get('label') or r['id']} · {present.owner_text(r, ws_id, names)} · {r['status']}")
            c2.button(
                "Stop" if r["status"] == "running" else "Cancel",
                key=f"teacher_stop_{r['id']}",
                icon=":material/stop:",
                on_click=stop,
                args=(r["id"],),
                width="stretch",
            )
        ss.teacher_limit = fairqueue.max_queued_per_workspace(store) or None
        st.number_input(
            "Queued runs per person",
            1,
            100,
            step=1,
            value=None,
            key="teacher_limit",
            placeholder="no limit",
            help="Empty = no limit.",
            on_change=lambda: fairqueue.set_max_queued_per_workspace(store, int(ss.teacher_limit or 0)),
        )


with live:
    if admin_pw:
        teacher_controls()
    show_queue()
    if current is None:
        st.info(
            "No runs yet in your workspace. Check your choices on the left and press **Start training**: with the sample set "
            "and the default linear probe the first curves appear within seconds."
        )
    else:
        queued = current["status"] == "queued"
        if queued:  # already listed under "Your queued runs" with its place in line: one line here
            st.caption(
                f"{current.get('label') or current['id']}: queued at {fmt.format_time(current['created'])}; "
                "its progress and curves show here once it starts."
            )
        else:
            title = "Your current run" if active else "Your last run"
            st.markdown(
                f"**{title}** · {current.get('label') or current['id']} · started "
                f"{fmt.format_time(current.get('started') or current['created'])}"
            )
            show_status(current["id"])
            show_curves(current["id"])
