"""Learn: a guided class experiment on what frozen layers do, with the words explained."""

from pathlib import Path

import streamlit as st

from tl_dashboard import charts, compare, data, stats, workspaces
from tl_dashboard import formatting as fmt
from tl_dashboard import ui_state as ui
from tl_dashboard.layers import Block, describe_blocks
from tl_dashboard.runs import ACTIVE_STATUSES, RunStore
from tl_dashboard.worker import reap
from views import present, widgets, workspace

ss = st.session_state
ui.require_router(ss, "pages/learn.py", st.switch_page, st.query_params.to_dict())
store = RunStore()
ws_id, admin_pw = workspace.me(ss)
reap(store)


@st.cache_data(show_spinner="Listing the model's blocks…", max_entries=16)
def blocks_of(model: str, num_classes: int) -> list[Block]:
    return describe_blocks(model, None, max(2, num_classes))


def data_folder() -> Path:
    """The data chosen on the Data page, else the bundled sample set."""
    chosen = Path(str(ss.get("data_dir") or ""))
    return chosen if chosen.is_dir() and data.class_folder_count(chosen) >= 2 else ui.sample_data_dir()


def queue(freezes: list[str]) -> None:
    cfg = ui.config_from_state(ss)
    cfg.data_dir = str(data_folder())
    with widgets.reported("Not queued", page="learn"):
        group, ids = workspaces.submit_sweep(
            store, cfg, freezes, ws_id, from_scratch=True, admin_password=admin_pw, repeats=int(ss.get("learn_repeats", 1))
        )
        ss.learn_group = group
        widgets.flash(
            "learn",
            "success",
            f"Queued {len(ids)} runs. They train one after another in the background; you can leave this page or reload it.",
        )


def stop(run_id: str) -> None:
    with widgets.reported("Not stopped", page="learn"):  # checked in the core: your own runs, or the teacher
        workspaces.stop_run(store, run_id, ws_id, admin_pw)


def current_group() -> str | None:
    """Your latest sweep (other people's sweeps are on Compare)."""
    my_groups = {r.get("group_id") for r in workspaces.list_runs(store, ws_id, mine=True)}
    sweeps = [g for g in compare.list_sweeps(store) if g["group_id"] in my_groups]
    ids = {g["group_id"] for g in sweeps}
    if ss.get("learn_group") in ids:
        return ss.learn_group
    return sweeps[0]["group_id"] if sweeps else None


st.title("Learn: what frozen layers do")
st.markdown(
    "A pretrained network already knows how to see: its early blocks detect edges and colours, the later ones "
    "textures and object parts. **Transfer learning** keeps that knowledge and teaches only what is new, your "
    "classes. How much of the network should you let change? This page runs the experiment that answers it on "
    "your own data, and says what to look for in the charts."
)

with st.expander("The words, in plain language", expanded=True):
    left, right = st.columns(2, gap="large")
    left.markdown(
        "**Freezing** a block means its weights are not updated: they stay as loaded. Frozen blocks need no "
        "gradients, so epochs are faster, and their output can be computed once and reused (the feature cache). "
        "On the Model page frozen blocks are the grey bars; on the Compare page's drift chart they stay at exactly 0.\n\n"
        "**Linear probe**: freeze everything except the new *head*, the last layer that maps the network's "
        "features to your classes. Only a few thousand numbers learn: fast and hard to overfit, but limited to "
        "the features the network learned on ImageNet.\n\n"
        "**Fine-tuning**: also let some (*partial*) or all (*full*) of the pretrained blocks learn, so the "
        "features adapt to your images. More capacity, slower epochs, and with few images more risk of "
        "overfitting.\n\n"
        "**From scratch**: the same network starting from random weights, with nothing transferred. The gap "
        "between it and the others is what the pretrained weights are worth."
    )
    right.markdown(
        "**BatchNorm statistics**: BatchNorm layers rescale activations with a running mean and variance. With "
        "BN mode *frozen* (Model page) frozen blocks keep the statistics from pretraining; with *train* they "
        "re-estimate them from your batches even though their weights stay frozen. The Compare page shows "
        "that as green diamonds on the drift chart.\n\n"
        "**Learning rate**: the size of each update step (Train page slider). Too high and the loss jumps or "
        "explodes; too low and the curves barely move. Pretrained blocks usually want a smaller one than a "
        "fresh head.\n\n"
        "**Overfitting**: the model memorises the training images instead of learning the classes. You see "
        "it on the loss chart: the train loss (dotted) keeps falling while the validation loss (solid) stops "
        "falling and starts to rise. More frozen blocks, augmentation or more images push it back."
    )

# -- the experiment ------------------------------------------------------------------------------
st.header("The experiment")
folder = data_folder()
n_classes = data.class_folder_count(folder)
st.markdown(
    "Train the same network on the same images, split and seed several times, changing only **how much of it "
    "learns**: a linear probe, two partial fine-tunes, a full fine-tune, and the full network from scratch. The "
    "runs queue and train one after another in the background."
)
if str(folder) != str(ss.get("data_dir")):
    st.caption(f"No usable data folder chosen on the Data page, so the experiment uses the sample set `{folder}`.")

blocks = None
with widgets.reported(f"Cannot plan the experiment for model {ss.model!r} (pick another on the Model page)"):
    blocks = blocks_of(ss.model, n_classes)
if blocks is None:
    st.stop()
n_body = sum(b.kind != "head" for b in blocks)
freezes = compare.classroom_freezes(n_body)

s1, s2 = st.columns([3, 1])
with s1:
    st.markdown(
        f"Data: **{folder.name}** ({n_classes} classes) · model **{ss.model}** ({n_body} blocks + head) · "
        f"learning rate **{(f'{ss.lr:g}' if ss.lr else 'auto')}** · batch size **{ss.batch_size}** · image size "
        f"**{ss.image_size or 'default'}** · seed **{ss.seed}** · BN mode **{ss.bn_mode}**"
    )
    st.caption(
        "These are your Data, Model and Train page settings; change them there. On a CPU the full "
        "fine-tune and from-scratch runs take longest: fewer epochs or a smaller image size make the "
        "sweep quicker."
    )
with s2:
    st.number_input(
        "Epochs per run (0 = auto)",
        0,
        200,
        step=1,
        help="Shared with the Train page. 5 to 10 epochs "
        "show the differences; each extra epoch adds time to every run. auto: the linear probe trains "
        "until its solver converges, the other runs 10 epochs.",
        **ui.bind(ss, "epochs"),
    )
    st.number_input(
        "Training images per class (0 = all)",
        0,
        10_000,
        step=1,
        **ui.bind(ss, "train_per_class"),
        help="Few images per class make overfitting visible: with 5 or so, the from-scratch and full "
        "fine-tune runs memorise their training images (train loss falls to 0) while their "
        "validation loss turns up. Validation always uses every held-out image.",
    )
    st.number_input(
        "Repeats (seeds) per run",
        1,
        10,
        step=1,
        key="learn_repeats",
        help="Each run again with the next seeds (new split and head). The sweep chart then plots "
        "the mean with a 95% error bar: differences inside the bars are not established.",
    )

st.dataframe(
    compare.experiment_plan(blocks, freezes, from_scratch=True),
    hide_index=True,
    key="learn_plan",
    column_config={"trainable params": st.column_config.NumberColumn(format="localized")},
)
mine_active = bool(ss.get("learn_group")) and any(r["status"] in ACTIVE_STATUSES for r in store.list_runs(group_id=ss.get("learn_group")))
others = [r for r in store.list_runs(ACTIVE_STATUSES) if not mine_active or r.get("group_id") != ss.get("learn_group")]
st.button(
    "Queue the sweep",
    type="primary",
    icon=":material/playlist_add:",
    key="learn_queue",
    on_click=queue,
    args=(freezes,),
    disabled=mine_active,
    help=f"Queues the {len(freezes) + 1} runs above (x {int(ss.get('learn_repeats', 1))} seeds) for the background worker.",
)
if mine_active:
    st.caption("Your sweep is queued or training (below). Cancel its runs there to queue a new one.")
elif others:
    st.caption(f"{len(others)} other run(s) are queued or training; the new runs wait behind them.")
widgets.show_flash("learn")

# -- live status ---------------------------------------------------------------------------------
st.subheader("Your sweep")
group = current_group()
group_active = bool(group and any(r["status"] in ACTIVE_STATUSES for r in store.list_runs(group_id=group)))


@widgets.live_fragment(group_active)
def sweep_status(group_id: str | None) -> bool:
    if group_id is None:
        st.info("No sweep yet. Press **Queue the sweep** above; its runs appear here with their status.")
        return False
    points = compare.sweep_points(store, group_id)
    active = any(p["status"] in ACTIVE_STATUSES for p in points)
    for p in points:
        c1, c2, c3 = st.columns([3, 4, 1.2], vertical_alignment="center")
        c1.markdown(f"**{p['label']}**  \n{p['freeze_label']}" + (" · random weights" if p["from_scratch"] else ""))
        if p["status"] == "running":
            run = store.get_run(p["run_id"])
            prog = present.progress_info(run, store.steps(p["run_id"])[-60:], run["config"].get("batch_size"))
            c2.progress(prog["fraction"], text=f"running · {prog['text']}")
            c3.button("Stop", key=f"learn_stop_{p['run_id']}", icon=":material/stop:", on_click=stop, args=(p["run_id"],))
        elif p["status"] == "queued":
            c2.markdown(":gray-badge[queued] waiting for the runs before it")
            c3.button("Cancel", key=f"learn_cancel_{p['run_id']}", icon=":material/close:", on_click=stop, args=(p["run_id"],))
        else:
            acc = (
                ""
                if p["best_val_accuracy"] is None
                else (f" · best val accuracy **{stats.accuracy_text(p['best_val_accuracy'], p.get('val_images'))}**")
            )
            secs = "" if p["train_seconds"] is None else f" · {fmt.format_seconds(p['train_seconds'])}"
            colour = {"finished": "green", "stopped": "orange", "cancelled": "gray"}.get(p["status"], "red")
            c2.markdown(f":{colour}-badge[{p['status']}]{acc}{secs}")
    if any(p["best_val_accuracy"] is not None and p["trainable_params"] for p in points):
        widgets.plot(charts.sweep_figure(points), "learn_sweep_chart")
        note = stats.sweep_overlap_note(stats.group_repeats(points))
        if note:
            st.caption(note)
    if active:
        st.caption("Updates every 2 seconds while a run is queued or training.")
    else:
        counts = {st_: sum(p["status"] == st_ for p in points) for st_ in ("finished", "stopped", "cancelled", "failed", "interrupted")}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        done = "The sweep is done" if counts["finished"] == len(points) else "The sweep has ended"
        st.success(f"{done} ({summary}). Open the Compare page to overlay its curves and see what each layer learned.")
        if st.button("Compare the runs", icon=":material/compare_arrows:", key="learn_to_compare"):
            ss.cmp_sweep = group_id  # open Compare on this sweep, with its finished runs picked
            ss.cmp_runs = [p["run_id"] for p in points if p["status"] in ("finished", "stopped")]
            st.switch_page("pages/compare.py")
    return active


sweep_status(group)

# -- questions -----------------------------------------------------------------------------------
st.header("Questions to answer from the charts")
st.markdown(
    "1. **Speed.** Which depth trains fastest per epoch, and by how much? (Compare page: *time per epoch* in the "
    "table; the right-hand sweep chart.) Why does freezing the *early* blocks save more time than their few "
    "parameters suggest?\n"
    "2. **Accuracy.** Which run generalises best, with the highest validation accuracy? Is it the one with the "
    "most trainable parameters? (Left-hand sweep chart.)\n"
    "3. **Overfitting.** Overlay the runs on the Compare page. Where does the validation loss (solid) start rising "
    "while the train loss (dotted) keeps falling? Which depth does it first?\n"
    "4. **Transfer.** The full fine-tune and the from-scratch run have exactly the same trainable parameters. How "
    "far apart do they end, and what does that say about the pretrained weights?\n"
    "5. **What changed.** In *What each layer learned*, pick the full fine-tune: do the early or the late blocks "
    "move most? Pick the linear probe: what stays at zero?\n"
    "6. **Try next.** Change one thing and queue the sweep again: BN mode *train* (Model page), or the learning "
    "rate ×10 (Train page). Which runs react most?"
)
st.page_link("pages/compare.py", label="Go to Compare", icon=":material/compare_arrows:")
