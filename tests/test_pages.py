"""Page tests with streamlit.testing.v1.AppTest, plus the pure helpers behind the pages.

Each page runs without exception, its key widgets exist, and choices flow from page to page
through the canonical session keys. One test trains a real (tiny) run from the Train page and
finds it on the Runs page. The store and the datasets folder live in tmp_path.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.files import png_bytes, zip_bytes
from tl_dashboard import charts, data, layers, ui_state, workspaces
from tl_dashboard.layers import Block
from tl_dashboard.runs import RunStore
from views import present

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Store and datasets in tmp_path; no hub probe; the worker starts from the repo root."""
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.delenv("TL_ALLOWED_ROOTS", raising=False)
    monkeypatch.chdir(REPO)
    return tmp_path


def open_page(page: str | None = None, at: AppTest | None = None, ws: str | None = None) -> AppTest:
    """Run the app (router first, as a browser would), then switch to ``pages/<page>.py``.

    ``ws``: open that workspace's link (``?ws=...``), as a bookmark or a second tab would.
    """
    if at is None:
        at = AppTest.from_file(APP, default_timeout=60)
        if ws:
            at.query_params["ws"] = ws
        at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def png(colour=(200, 30, 30), size=24) -> bytes:
    return png_bytes((size, size), colour)


def make_folder(root: Path, counts: dict[str, int], junk: dict[str, bytes] | None = None) -> Path:
    for i, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            (root / cls / f"{j}.png").write_bytes(png((40 * i % 255, 7 * j % 255, 90)))
    for name, payload in (junk or {}).items():
        (root / name).write_bytes(payload)
    return root


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


# -- home -----------------------------------------------------------------------------------------
def test_home_explains_and_preselects_sample_and_bundled_weights(env):
    at = open_page()
    md = texts(at, "markdown")
    assert "emoji3" in md and "efficientnet_lite0" in md and "bundled" in md
    assert "head only (linear probe)" in md
    assert at.button(key="start_sample")
    assert Path(at.session_state["data_dir"]) == ui_state.sample_data_dir()


def test_home_start_button_resets_to_sample_and_opens_train(env, shapes_dir):
    at = open_page()
    at.session_state["data_dir"] = str(shapes_dir)
    at.session_state["freeze"] = "none"
    at.button(key="start_sample").click().run()
    assert not at.exception
    assert at.session_state["freeze"] == "head"
    assert Path(at.session_state["data_dir"]) == ui_state.sample_data_dir()
    assert at.button(key="start_training")  # we are on the Train page now


# -- data -----------------------------------------------------------------------------------------
def test_data_page_sample_set(env):
    at = open_page("data")
    assert at.button_group(key="w_data_source").value == "sample"
    assert [m.value for m in at.metric][:3] == ["3", "144", "36"]
    assert at.get("plotly_chart"), "class counts chart"
    assert len(at.image) == 3 and all(len(i.proto.imgs) == 8 for i in at.image), "a thumbnail strip per class"
    assert not at.warning and not at.error
    assert at.slider(key="w_val_fraction").value == pytest.approx(0.2)


def test_data_page_bad_folder_shows_one_line_error(env, tmp_path):
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("folder").run()
    at.text_input(key="w_data_dir").input(str(tmp_path / "nope")).run()
    assert not at.exception
    assert "Data folder not found" in texts(at, "error")


def test_a_folder_that_fails_the_check_does_not_replace_the_data(env, tmp_path):
    one = make_folder(tmp_path / "oneclass", {"cats": 3})
    at = open_page("data")
    before = at.session_state["data_dir"]
    at.button_group(key="w_data_source").set_value("folder").run()
    at.text_input(key="w_data_dir").input(str(one)).run()
    assert not at.exception
    assert "only one class" in texts(at, "error") and at.session_state["data_dir"] == before
    at = open_page("train", at)
    assert not at.button(key="start_training").disabled


def test_data_page_refuses_folders_outside_the_allowed_roots(env, tmp_path, monkeypatch):
    allowed = make_folder(tmp_path / "class-data" / "pets", {"cats": 3, "dogs": 3})
    outside = make_folder(tmp_path / "private", {"a": 3, "b": 3})
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("TL_ALLOWED_ROOTS", str(tmp_path / "class-data"))
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("folder").run()
    for sneaky in (str(outside), str(allowed / ".." / ".." / "private"), str(allowed / "escape")):
        at.text_input(key="w_data_dir").input(sneaky).run()
        assert not at.exception and "outside" in texts(at, "error").lower(), sneaky
        assert at.session_state["data_dir"] != str(outside)
    at.text_input(key="w_data_dir").input(str(allowed)).run()
    assert not at.exception and at.session_state["data_dir"] == str(allowed.resolve())
    assert "cats" in texts(at, "markdown") + texts(at, "caption") + texts(at, "subheader")


def test_data_page_warns_and_lists_skipped(env, tmp_path):
    folder = make_folder(tmp_path / "imb", {"many": 20, "few": 3}, junk={"many/notes.txt": b"hi", "few/bad.png": b"xx"})
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("folder").run()
    at.text_input(key="w_data_dir").input(str(folder)).run()
    assert not at.exception and not at.error
    warn = texts(at, "warning")
    assert "Class imbalance" in warn and "'few' (3)" in warn
    table = at.dataframe[0].value
    assert set(table["reason"].str.split(" ").str[0]) >= {"not", "unreadable"}
    assert at.session_state["data_dir"] == str(folder.resolve())


def test_data_page_zip_upload_becomes_the_data(env):
    pets = zip_bytes(
        {f"pets/{cls}/{i}.png": png(colour) for cls, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))) for i in range(4)}
    )
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("upload").run()
    at.file_uploader(key="zip_0").set_value(("pets.zip", pets, "application/zip")).run()
    assert not at.exception
    assert "Imported 8 images" in texts(at, "success")
    data_dir = Path(at.session_state["data_dir"])
    assert data_dir.is_relative_to(env / "datasets") and sorted(p.name for p in data_dir.iterdir()) == ["cats", "dogs"]
    assert [m.value for m in at.metric][0] == "2"


def test_data_page_failed_upload_keeps_the_data_and_is_not_offered_again(env):
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("upload").run()
    good = zip_bytes({f"pets/{c}/{i}.png": png(col) for c, col in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))) for i in range(3)})
    at.file_uploader(key="zip_0").set_value(("pets.zip", good, "application/zip")).run()
    in_use = at.session_state["data_dir"]
    for n, bad in enumerate([zip_bytes({"notes.txt": b"no images"}), zip_bytes({"cats/1.png": png(), "cats/2.png": png()})]):
        at.file_uploader(key=f"zip_{n + 1}").set_value(("bad.zip", bad, "application/zip")).run()
        assert not at.exception and "data in use is unchanged" in texts(at, "error")
        assert at.session_state["data_dir"] == in_use
    at.button_group(key="w_data_source").set_value("folder").run()
    options = at.selectbox(key="reuse_dataset").options
    assert options == ["pets · 2 classes · 6 images"]  # the zip's class folders, not failed uploads
    assert Path(in_use).name == "pets"


def test_data_page_folder_upload_keeps_class_folders(env):
    files = [
        (f"pets/{cls}/{i}.png", png(c), "image/png") for cls, c in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))) for i in range(3)
    ] + [("pets/loose.png", png(), "image/png"), ("pets/cats/broken.png", b"xx", "image/png")]
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("upload").run()
    at.file_uploader(key="dir_0").set_value(files).run()
    assert not at.exception
    assert "Saved 6 images in 2 classes" in texts(at, "success") and "2 file(s) skipped" in texts(at, "success")
    data_dir = Path(at.session_state["data_dir"])
    assert sorted(p.name for p in data_dir.iterdir()) == ["cats", "dogs"]
    assert at.file_uploader(key="dir_1")  # a fresh, empty uploader for the next upload


def test_data_page_bad_zip_is_an_error_not_a_traceback(env):
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("upload").run()
    at.file_uploader(key="zip_0").set_value(("x.zip", b"not a zip", "application/zip")).run()
    assert not at.exception
    assert "Could not import x.zip" in texts(at, "error")


def test_data_page_build_your_own(env):
    at = open_page("data")
    at.button_group(key="w_data_source").set_value("build").run()
    at.text_input(key="build_name").input("gestures")
    at.text_input(key="build_classes").input("thumbs up, thumbs down").run()
    at.button(key="build_create").click().run()
    assert not at.exception
    root = Path(at.session_state["builder_dir"])
    assert sorted(p.name for p in root.iterdir()) == ["thumbs_down", "thumbs_up"]
    assert at.button(key="build_use").disabled
    for cls in ("thumbs_down", "thumbs_up"):
        at.button_group(key="build_target").set_value(cls).run()
        nonce = at.session_state["upload_nonce"]
        at.file_uploader(key=f"build_up_{nonce}").set_value(
            [("a.png", png((9, 9, 9)), "image/png"), ("a.png", png((99, 9, 9)), "image/png")]
        ).run()
        assert not at.exception
        assert len(list((root / cls).glob("*.png"))) == 2  # never overwrites: a.png, a-1.png
    assert not at.button(key="build_use").disabled
    at.button(key="build_use").click().run()
    assert at.session_state["data_dir"] == str(root)
    assert [m.value for m in at.metric][:3] == ["2", "2", "2"]


# -- model ----------------------------------------------------------------------------------------
def test_model_page_widgets_and_head_locked(env):
    at = open_page("model")
    assert at.selectbox(key="w_model").value == "efficientnet_lite0"
    assert at.text_input(key="w_model_query")
    assert at.button_group(key="w_preset").value == "head"
    toggles = {t.key: t for t in at.toggle}
    assert toggles["w_frz_head_locked"].disabled and not toggles["w_frz_head_locked"].value
    assert toggles["w_frz_stem"].value and toggles["w_frz_neck"].value
    assert at.get("plotly_chart"), "blocks strip"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frozen blocks"] == "9 of 9"
    assert at.radio(key="w_bn_mode").value == "frozen"


def test_model_choices_flow_to_train_page(env):
    at = open_page("model")
    at.button_group(key="w_preset").set_value("first").run()
    at.slider(key="w_first_n").set_value(4).run()
    assert at.session_state["freeze"] == "4"
    at.radio(key="w_bn_mode").set_value("train").run()
    at = open_page("train", at)
    summary = texts(at, "markdown")
    assert "first 4 blocks frozen" in summary and "BatchNorm train" in summary
    cfg = ui_state.config_from_state(at.session_state)
    assert (cfg.freeze, cfg.bn_mode) == ("4", "train")
    at = open_page("model", at)  # back again: the widgets show the choice, not their defaults
    assert at.button_group(key="w_preset").value == "first" and at.slider(key="w_first_n").value == 4


def test_model_toggles_make_a_custom_plan(env):
    at = open_page("model")
    at.button_group(key="w_preset").set_value("none").run()
    assert at.session_state["freeze"] == "none"
    at.toggle(key="w_frz_blocks.2").set_value(True).run()
    assert at.session_state["freeze"] == "blocks.2"
    assert at.button_group(key="w_preset").value == "custom"
    at.toggle(key="w_frz_stem").set_value(True).run()
    at.toggle(key="w_frz_blocks.0").set_value(True).run()
    at.toggle(key="w_frz_blocks.1").set_value(True).run()
    assert at.session_state["freeze"] == "4"  # a frozen prefix is written as N
    assert {m.label: m.value for m in at.metric}["Frozen blocks"] == "4 of 9"


def test_model_search_and_switch_keeps_a_valid_plan(env):
    at = open_page("model")
    at.toggle(key="w_frz_blocks.6").set_value(False).run()
    assert at.session_state["freeze"] == "stem,blocks.0,blocks.1,blocks.2,blocks.3,blocks.4,blocks.5,neck"
    at.text_input(key="w_model_query").input("resnet1").run()
    options = at.selectbox(key="w_model").options
    assert any(o.startswith("resnet18") for o in options)
    at.selectbox(key="w_model").set_value("resnet18").run()
    assert not at.exception
    assert at.session_state["model"] == "resnet18"
    assert "random" in texts(at, "warning")  # no weights for resnet18 here, said plainly
    assert at.session_state["freeze"] == "1"  # names resnet18 lacks were dropped: stem is left
    assert "named blocks this model does not have" in texts(at, "info")
    assert [t.key for t in at.toggle if t.key.startswith("w_frz_")][:5] == [
        "w_frz_stem",
        "w_frz_layer1",
        "w_frz_layer2",
        "w_frz_layer3",
        "w_frz_layer4",
    ]


# -- train and runs ---------------------------------------------------------------------------------
def test_train_page_defaults_and_buttons(env):
    at = open_page("train")
    assert at.number_input(key="w_epochs").value is None  # auto: empty, placeholder "auto (...)"
    assert at.number_input(key="w_batch_size").value == 32
    assert at.select_slider(key="w_lr").value == 0.0  # auto
    assert at.number_input(key="w_weight_decay").value == pytest.approx(0.01)
    assert at.number_input(key="w_image_size").value is None  # auto
    assert at.session_state["epochs"] == 0 and at.session_state["image_size"] == 0  # TrainConfig: 0 = auto
    assert "auto → 224 px" in texts(at, "caption") and "auto → until the head's fit converges" in texts(at, "caption")
    assert at.number_input(key="w_seed").value == 0
    assert at.toggle(key="w_augment").value is False
    assert at.radio(key="w_feature_cache").value == "auto"
    assert not at.button(key="start_training").disabled and at.button(key="stop_training").disabled
    assert "No runs yet" in texts(at, "info")


def test_train_page_queues_a_freeze_depth_sweep_and_shows_the_device(env, monkeypatch):
    from tl_dashboard import worker
    from tl_dashboard.runs import RunStore

    monkeypatch.setattr(worker, "start_worker", lambda store: None)  # queue only; nothing trains here
    at = open_page("train")
    assert at.selectbox(key="w_device").value == "auto" and "cpu" in at.selectbox(key="w_device").options
    assert at.text_input(key="sweep_depths").value == "0,3,6,all"
    at.button(key="queue_sweep").click().run()
    assert not at.exception
    runs = RunStore(env / "runs").list_runs()
    assert sorted(r["config"]["freeze"] for r in runs) == sorted(["none", "3", "6", "head"])
    assert len({r["group_id"] for r in runs}) == 1 and all(r["status"] == "queued" for r in runs)
    assert "Queued 4 runs" in texts(at, "success")
    at.text_input(key="sweep_depths").set_value("0,42").run()
    assert "42" in texts(at, "error") and at.button(key="queue_sweep").disabled


def test_train_page_unfreeze_schedule_reaches_the_config(env):
    at = open_page("train")
    at.toggle(key="unfreeze_on").set_value(True).run()
    assert not at.exception
    assert at.number_input(key="w_unfreeze_at").value == 5  # half of the 10 default epochs
    at.number_input(key="w_unfreeze_blocks").set_value(3).run()
    cfg = ui_state.config_from_state(at.session_state)
    assert (cfg.unfreeze_at, cfg.unfreeze_blocks, cfg.backbone_lr_scale) == (5, 3, 0.1)
    at.toggle(key="unfreeze_on").set_value(False).run()
    assert ui_state.config_from_state(at.session_state).unfreeze_at == 0


def test_train_page_shows_failed_run_error(env):
    store = RunStore()
    ws = workspaces.create_workspace(store)
    run_id = store.create_run({"model": "efficientnet_lite0", "epochs": 3}, label="broken", workspace=ws)
    store.finish_run(run_id, "failed", error="Data folder not found: /nowhere. Pick an existing folder.")
    at = open_page("train", ws=ws)
    assert "failed: Data folder not found: /nowhere" in texts(at, "error")
    assert not at.button(key="start_training").disabled


def test_a_live_run_survives_a_new_session(env):
    """A second browser on the same workspace link sees its active run from the store, with Stop enabled;
    a browser in another workspace does not see it as its own and cannot stop it."""
    store = RunStore()
    ws = workspaces.create_workspace(store)
    run_id = store.create_run({"model": "efficientnet_lite0", "epochs": 2}, label="elsewhere", status="running", workspace=ws)
    store.heartbeat(run_id, {"epoch": 1, "epochs": 2, "step": 3, "total_steps": 10})
    other = open_page("train")  # a first visit: a workspace of its own
    assert other.query_params["ws"] != [ws] and "elsewhere" not in texts(other, "markdown")
    assert other.button(key="stop_training").disabled
    at = open_page("train", ws=ws)
    assert "Your current run" in texts(at, "markdown") and "elsewhere" in texts(at, "markdown")
    assert not at.button(key="start_training").disabled and not at.button(key="stop_training").disabled
    assert at.progress[0].value == 30  # percent
    at.button(key="stop_training").click().run()
    assert store.stop_requested(run_id)


def test_a_class_on_one_server_polls_less_often_and_says_so(env, monkeypatch):
    """Past ten sessions the live views stretch their interval in proportion (the CPU goes to the run),
    and the Train page says why it updates less often; sessions that left stop counting."""
    from views import widgets

    monkeypatch.setattr(widgets, "_SEEN", {})
    assert widgets.pace(2.0) == 2.0 and widgets.sessions_here() == 1
    now = time.monotonic()
    widgets._SEEN.update({f"s{i}": now for i in range(29)} | {f"gone{i}": now - 60 for i in range(50)})
    assert widgets.sessions_here() == 29 and widgets.pace(2.0) == 6.0 and widgets.pace(4.0) == 12.0
    widgets._SEEN.update({f"s{i}": now for i in range(29)})  # the expired ones were dropped; these stay
    store = RunStore()
    ws = workspaces.create_workspace(store)
    run_id = store.create_run({"model": "efficientnet_lite0", "epochs": 2}, label="watched", status="running", workspace=ws)
    store.heartbeat(run_id, {"epoch": 1, "epochs": 2, "step": 3, "total_steps": 10})
    at = open_page("train", ws=ws)
    assert "Updating every 6 s (curves every 12 s): 30 sessions share this server" in texts(at, "caption")
    monkeypatch.setattr(widgets, "_SEEN", {})
    assert "sessions share this server" not in texts(open_page("train", ws=ws), "caption")


def test_train_a_real_run_then_find_and_delete_it_on_runs_page(env):
    at = open_page("train")
    at.number_input(key="w_epochs").set_value(1).run()
    at.number_input(key="w_image_size").set_value(64).run()
    at.text_input(key="w_run_label").input("pytest tiny run").run()
    at.button(key="start_training").click().run()
    assert not at.exception
    store = RunStore()
    run_id = at.session_state["run_id"]
    deadline = time.monotonic() + 120
    while store.get_run(run_id)["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    run = store.get_run(run_id)
    assert run["status"] == "finished", (run["error"], store.logs(run_id))
    assert run["config"]["image_size"] == 64 and run["config"]["epochs"] == 1
    assert store.epochs(run_id) and store.steps(run_id)

    at.run()
    assert "finished" in texts(at, "success") and "Feature cache on" in texts(at, "caption")
    assert not at.button(key="start_training").disabled

    at = open_page("runs", at)
    table = at.dataframe[0].value
    assert list(table["label"]) == ["pytest tiny run"] and list(table["status"]) == ["finished"]
    assert at.selectbox(key="runs_pick").value == run_id
    assert at.button(key="runs_delete").disabled  # not without the confirmation
    at.checkbox(key=f"runs_confirm_{run_id}").check().run()
    at.button(key="runs_delete").click().run()
    assert not at.exception
    assert store.get_run(run_id) is None and "Deleted run" in texts(at, "success")
    assert "No runs yet" in texts(at, "info")


def test_runs_page_never_deletes_an_active_run(env):
    store = RunStore()
    ws = workspaces.create_workspace(store)
    done = store.create_run({"model": "resnet18"}, label="done", workspace=ws)
    store.finish_run(done, "stopped")
    active = store.create_run({"model": "efficientnet_lite0"}, label="waiting", workspace=ws)  # queued
    stranger = open_page("runs")  # everyone's runs are visible, read-only
    assert len(stranger.dataframe[0].value) == 2 and list(stranger.dataframe[0].value["owner"]) == ["someone"] * 2
    assert not any(b.key in ("runs_stop", "runs_delete") for b in stranger.button)
    at = open_page("runs", ws=ws)
    assert len(at.dataframe[0].value) == 2
    assert at.selectbox(key="runs_pick").value == active
    assert at.button(key="runs_stop") and not any(b.key == "runs_delete" for b in at.button)
    at.button(key="runs_stop").click().run()
    assert store.get_run(active)["status"] == "cancelled"


# -- pure helpers -----------------------------------------------------------------------------------
BLOCKS = [
    Block(i, n, k, [n], p, s)
    for i, (n, k, p, s) in enumerate(
        [
            ("stem", "stem", 900, (32, 8, 8)),
            ("blocks.0", "body", 1000, (16, 8, 8)),
            ("blocks.1", "body", 50_000, (24, 4, 4)),
            ("head", "head", 300, (3,)),
        ]
    )
]


def test_freeze_specs_round_trip():
    assert layers.spec_from_frozen(BLOCKS, ["stem", "blocks.0", "blocks.1"]) == "head"
    assert layers.spec_from_frozen(BLOCKS, []) == "none"
    assert layers.spec_from_frozen(BLOCKS, ["blocks.0", "stem"]) == "2"
    assert layers.spec_from_frozen(BLOCKS, ["blocks.1"]) == "blocks.1"
    for spec in ("head", "none", "1", "2", "blocks.0,blocks.1"):
        assert layers.spec_from_frozen(BLOCKS, layers.frozen_from_spec(spec, BLOCKS)) == spec
    assert layers.preset_of("3", BLOCKS) == "head" and layers.preset_of("stem,x") == "custom"
    assert layers.freeze_label("2") == "first 2 blocks frozen"


def test_bind_keeps_canonical_values_across_dropped_widget_state():
    state: dict = {}
    ui_state.init_state(state)
    kw = ui_state.bind(state, "epochs")
    assert kw["key"] == "w_epochs" and state["w_epochs"] == ui_state.DEFAULTS["epochs"]
    state["w_epochs"] = 3
    kw["on_change"]()
    del state["w_epochs"]  # Streamlit drops it when the page is not drawn
    ui_state.bind(state, "epochs")
    assert state["epochs"] == state["w_epochs"] == 3
    assert ui_state.config_from_state(state).epochs == 3


def test_require_router_sends_a_bare_page_through_app_py():
    calls: list[str] = []
    state: dict = {}
    ui_state.require_router(state, "pages/train.py", calls.append)
    assert calls == ["app.py"] and state["_deep_link"] == "pages/train.py"
    ui_state.init_state(state)
    calls.clear()
    ui_state.require_router(state, "pages/train.py", calls.append)
    assert calls == []


def test_data_warnings():
    assert data.data_warnings({"a": {"train": 40, "val": 10}, "b": {"train": 40, "val": 10}}) == []
    w = data.data_warnings({"a": {"train": 40, "val": 10}, "b": {"train": 3, "val": 1}})
    assert len(w) == 2 and "12.5x" in w[0] and "'b' (4)" in w[1]


def test_feature_cache_note():
    used = {"feature_cache": {"used": True, "frozen_prefix_blocks": 9, "estimated_mb": 0.9, "build_seconds": 1.234}}
    assert present.feature_cache_note(used).startswith(
        "Feature cache on: the 9 frozen block(s) ran once per image (0.9 MB, built in 1.2 s)"
    )
    off = {"feature_cache": {"used": False, "reason": "the feature cache is turned off for this run"}}
    assert present.feature_cache_note(off) == (
        "Feature cache off: the feature cache is turned off for this run. Every epoch runs the whole network."
    )
    assert present.feature_cache_note({}) is None


def test_pick_current_run_prefers_active_then_own_then_newest():
    runs = [{"id": "c", "status": "finished"}, {"id": "b", "status": "running"}, {"id": "a", "status": "failed"}]
    assert present.pick_current_run(runs, "a")["id"] == "b"
    runs[1]["status"] = "stopped"
    assert present.pick_current_run(runs, "a")["id"] == "a"
    assert present.pick_current_run(runs, None)["id"] == "c"
    assert present.pick_current_run([], None) is None


def test_progress_info_eta_and_text():
    run = {"status": "running", "progress": {"epoch": 2, "epochs": 4, "step": 10, "total_steps": 20}, "config": {"batch_size": 8}}
    steps = [{"step": i, "time": 100.0 + 0.5 * i} for i in range(1, 11)]
    p = present.progress_info(run, steps, 8)
    assert p["fraction"] == 0.5 and p["eta"] == pytest.approx(5.0) and p["images_per_sec"] == pytest.approx(16)
    assert p["text"] == "epoch 2/4 · step 10/20 · 16 images/s · about 5 s left"
    assert present.progress_info({"status": "queued", "progress": {}}, [])["text"].startswith("Queued")


# -- charts -----------------------------------------------------------------------------------------
def test_class_counts_figure():
    fig = charts.class_counts_figure({"cats": {"train": 8, "val": 2}, "dogs": {"train": 6, "val": 1}})
    assert [t.name for t in fig.data] == ["train", "val"] and fig.layout.barmode == "stack"
    assert list(fig.data[0].y) == [8, 6] and list(fig.data[1].y) == [2, 1]
    assert fig.data[0].marker.color == charts.TRAIN and fig.layout.title.text == "Images per class"


def test_blocks_strip_figure_colours_by_state():
    fig = charts.blocks_strip_figure(BLOCKS, ["stem", "blocks.0", "head"])  # the head never freezes
    frozen, trainable = fig.data
    assert (frozen.name, frozen.marker.color) == ("frozen", charts.FROZEN)
    assert (trainable.name, trainable.marker.color) == ("trainable", charts.TRAINABLE)
    assert list(frozen.x) == ["stem", "blocks.0"] and list(trainable.x) == ["blocks.1", "head"]
    assert list(trainable.y) == [50_000, 300]
    assert list(fig.layout.xaxis.categoryarray) == ["stem", "blocks.0", "blocks.1", "head"]
    assert "4% of the parameters frozen" in fig.layout.title.text
    probe = charts.blocks_strip_figure(BLOCKS, ["stem", "blocks.0", "blocks.1"])  # only the head trains
    assert "99.4% of the parameters frozen" in probe.layout.title.text  # never rounded up to 100%


def test_loss_and_accuracy_figures():
    steps = [{"step": i, "epoch": i / 4, "loss": 1.0 / i} for i in range(1, 9)]
    epochs = [
        {"epoch": e, "train_loss": 0.5 / e, "val_loss": 0.6 / e, "train_acc": 0.5 + 0.2 * e, "val_acc": 0.4 + 0.2 * e} for e in (1, 2)
    ]
    loss = charts.loss_figure(steps, epochs)
    assert [t.name for t in loss.data] == ["train loss (per step)", "train loss (epoch)", "val loss"]
    assert len(loss.data[0].x) == 8 and list(loss.data[2].y) == [0.6, 0.3]
    acc = charts.accuracy_figure(epochs)
    assert [t.name for t in acc.data] == ["train accuracy", "val accuracy", "kept model (epoch 2)"]  # the checkpoint's epoch
    tie = [*epochs, {"epoch": 3, "val_acc": 0.8, "val_loss": 0.2}, {"epoch": 4, "val_acc": 0.8, "val_loss": 0.2}]
    assert charts.accuracy_figure(tie).data[2].name == "kept model (epoch 3)"  # the engine's rule: lower loss, then earlier
    assert [t.name for t in charts.accuracy_figure(epochs[:1]).data] == ["train accuracy", "val accuracy"]  # one epoch: no star
    assert list(acc.data[1].y) == pytest.approx([60.0, 80.0]) and acc.layout.yaxis.title.text == "accuracy (%)"
    assert charts.loss_figure([], []).data[0].x == ()  # an empty run draws empty axes
    assert list(charts.loss_figure(steps, epochs, n_epochs=5).layout.xaxis.range) == [0, 5.2]  # still axis while live
    assert list(charts.accuracy_figure(epochs, n_epochs=5).layout.xaxis.range) == [0, 5.2]
    long = [{"step": i, "epoch": i / 100, "loss": 1.0} for i in range(1, 5002)]
    xs = charts.loss_figure(long, [], max_points=1000).data[0].x
    assert len(xs) <= 1001 and xs[0] == 0.01 and xs[-1] == 50.01


def test_router_menu_covers_every_page_file():
    import ast

    tree = ast.parse((REPO / "app.py").read_text())
    menu = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MENU")
    listed = {elt.elts[0].value for elt in menu.elts}
    assert {p.name for p in (REPO / "pages").glob("*.py")} <= listed


def test_run_title_names_a_run_once_in_every_picker():
    run = {
        "id": "20261126-070000-ab12",
        "label": "efficientnet_lite0 · first 3 blocks frozen",
        "status": "finished",
        "created": 1_800_000_000.0,
        "config": {"model": "efficientnet_lite0", "freeze": "3"},
        "summary": {"freeze_label": "first 3 blocks frozen", "best_val_accuracy": 0.9},
    }
    title = present.run_title(run, accuracy=True)
    assert title.count("efficientnet_lite0") == 1 and title.count("first 3 blocks frozen") == 1
    assert "best val acc 90.0%" in title and "finished" not in title
    bare = present.run_title({**run, "label": "", "status": "stopped", "summary": {}})
    assert bare.startswith(run["id"] + " · efficientnet_lite0 · first 3 blocks frozen · stopped")


def test_overlay_lists_a_run_without_epochs_and_curves_say_no_epoch_yet(env):
    rows = [{"run": "a", "epoch": 1, "split": s, "loss": 0.5, "accuracy": 0.8} for s in ("val", "train")]
    fig = charts.overlay_figure(rows, "loss", runs=["a", "b"])
    assert [t.name for t in fig.data if t.showlegend is not False] == ["a", "b (no completed epoch)"]
    assert [t.name for t in charts.overlay_figure(rows, "accuracy").data] == ["a", "a"]  # runs= optional

    def page():
        import streamlit as st

        from views import widgets

        widgets.curves([{"epoch": 0.1, "loss": 1.234}], [], {"config": {"epochs": 3}}, key="t", live=True)
        st.session_state.setdefault("epochs", 0)
        widgets.auto_number(st, "Epochs", "epochs", 1, 500, placeholder="auto (10 epochs)")

    at = AppTest.from_function(page).run()
    assert not at.exception and not at.get("plotly_chart")
    assert "No completed epoch yet" in at.caption[0].value and "1.234" in at.caption[0].value
    assert at.number_input[0].value is None and at.session_state["epochs"] == 0
    at.number_input[0].set_value(4).run()
    assert at.session_state["epochs"] == 4
    at.number_input[0].set_value(None).run()
    assert at.session_state["epochs"] == 0  # cleared: back to auto
