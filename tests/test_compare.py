"""Compare and sweeps: weight drift of real runs, the compare table, sweep queueing, and the two pages."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tl_dashboard import charts, compare, worker, workspaces
from tl_dashboard.engine import TrainConfig
from tl_dashboard.runs import RunStore

REPO = Path(__file__).resolve().parent.parent


def _train(store: RunStore, cfg: TrainConfig, label: str, group: str) -> str:
    rid = store.create_run(cfg.to_dict(), label=label, group_id=group)
    store.mark_running(rid, os.getpid(), socket.gethostname())
    worker.run_training(store, rid)
    run = store.get_run(rid)
    assert run["status"] == "finished", (run["error"], store.logs(rid))
    return rid


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads make tiny runs 10-20x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):
    """Two finished one-epoch runs of one sweep: first 3 blocks frozen, and head only with BN mode 'train'."""
    store = RunStore(tmp_path_factory.mktemp("cmp-runs"))
    base = dict(data_dir=str(shapes_dir), epochs=1, image_size=32, batch_size=8)
    a = _train(store, TrainConfig(**base, freeze="3"), "freeze=3", "sweep-test")
    b = _train(store, TrainConfig(**base, freeze="head", bn_mode="train"), "freeze=head", "sweep-test")
    return store, a, b


@pytest.fixture(scope="module")
def drifts(trained):
    store, a, b = trained
    return compare.weight_drift(store, a), compare.weight_drift(store, b)


def test_weight_drift_frozen_blocks_exactly_zero_trainable_not(drifts):
    partial, probe = drifts
    assert [r["block"] for r in partial][:3] == ["stem", "blocks.0", "blocks.1"]
    for r in partial:
        if r["frozen"]:
            assert r["drift"] == 0.0, r
        else:
            assert r["drift"] > 0.0, r
        assert r["bn_drift"] is None  # BN mode 'frozen': not measured
    assert sum(r["frozen"] for r in partial) == 3
    head = partial[-1]
    assert head["kind"] == "head" and head["measure"] == "absolute" and not head["frozen"]
    assert all(r["measure"] == "relative" for r in partial[:-1])


def test_weight_drift_bn_train_moves_statistics_not_frozen_weights(drifts):
    _, probe = drifts
    body = [r for r in probe if r["kind"] != "head"]
    assert all(r["frozen"] and r["drift"] == 0.0 for r in body)
    assert all(r["bn_drift"] is not None and r["bn_drift"] > 0 for r in body)  # every block has BatchNorm
    assert probe[-1]["drift"] > 0 and probe[-1]["bn_drift"] is None
    fig = charts.drift_figure(probe)
    assert {t.name for t in fig.data} >= {"frozen (kept as loaded)", "BatchNorm running statistics"}


def test_compare_table_flags_differences(trained):
    store, a, b = trained
    rows = compare.compare_table([store.get_run(a), store.get_run(b)], {a: store.epochs(a), b: store.epochs(b)})
    by = {r["field"]: r for r in rows}
    assert [r["field"] for r in rows] == list(compare.COMPARE_FIELDS)
    for f in ("freeze plan", "trainable params", "BN mode"):
        assert by[f]["differs"], by[f]
    for f in ("model", "learning rate", "data", "seed", "image size", "augmentation", "epochs", "weights source"):
        assert not by[f]["differs"], by[f]
    assert by["freeze plan"]["freeze=head"] == "head only (linear probe)"
    assert by["image size"]["freeze=3"] == "32 px"
    # pure: same labels get the id suffix, and equal display values are not flagged
    runs = [
        {"id": "r-aaaa", "label": "x", "config": {"lr": 1e-3, "augment": True}, "summary": {"best_val_accuracy": 0.9001}},
        {"id": "r-bbbb", "label": "x", "config": {"lr": 1e-3, "augment": False}, "summary": {"best_val_accuracy": 0.9002}},
    ]
    by = {r["field"]: r for r in compare.compare_table(runs)}
    assert by["augmentation"] == {"field": "augmentation", "x (aaaa)": "on", "x (bbbb)": "off", "differs": True}
    assert not by["learning rate"]["differs"] and not by["best val accuracy"]["differs"]


def test_overlay_rows_and_figures(trained):
    store, a, b = trained
    rows = compare.overlay_rows(store, [a, b, "no-such-run"])
    assert len(rows) == 4 and {r["run"] for r in rows} == {"freeze=3", "freeze=head"}
    assert {r["split"] for r in rows} == {"train", "val"}
    fig = charts.overlay_figure(rows, "accuracy")
    assert len(fig.data) == 4 and sum(t.showlegend for t in fig.data) == 2
    points = compare.sweep_points(store, "sweep-test")
    assert [p["run_id"] for p in points] == [a, b]
    assert points[1]["trainable_params"] < points[0]["trainable_params"]
    fig = charts.sweep_figure(points)
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 2


def test_compare_draws_nothing_itself():
    """Figures have one home, charts.py: compare.py computes rows, it never imports plotly."""
    assert "plotly" not in Path(compare.__file__).read_text()


def test_sweep_freezes_parsing():
    assert compare.sweep_freezes("0,2,4,all", 9) == ["none", "2", "4", "head"]
    assert compare.sweep_freezes(" 9, head,all ,none,0", 9) == ["head", "none"]
    assert compare.sweep_freezes("3", 9) == ["3"]
    for bad in ("10", "x", "-1", ""):
        with pytest.raises(ValueError, match="0..9|No sweep depths"):
            compare.sweep_freezes(bad, 9)
    assert compare.classroom_freezes(9) == ["head", "7", "4", "none"]


def test_queue_sweep_in_order_one_group_survives_restart(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(worker, "start_worker", lambda store: started.append(store.root))
    store = RunStore(tmp_path / "runs")
    base = TrainConfig(data_dir="some/data", epochs=3, seed=7, val_fraction=0.25)
    group, ids = compare.queue_sweep(store, base, ["none", "2", "all"], from_scratch=True)
    assert started == [store.root] and group.startswith("sweep-") and len(ids) == 4

    again = RunStore(tmp_path / "runs")  # a restart of the app: a new store on the same folder
    runs = list(reversed(again.list_runs(group_id=group)))
    assert [r["id"] for r in runs] == ids and all(r["status"] == "queued" for r in runs)
    assert [r["label"] for r in runs] == ["freeze=none", "freeze=2", "freeze=head", "from scratch"]
    assert [r["config"]["freeze"] for r in runs] == ["none", "2", "head", "none"]
    assert [r["config"]["weights"] for r in runs] == ["auto", "auto", "auto", "none"]
    assert {(r["config"]["data_dir"], r["config"]["seed"], r["config"]["val_fraction"]) for r in runs} == {("some/data", 7, 0.25)}
    sweep = compare.list_sweeps(again)[0]
    assert (sweep["group_id"], sweep["runs"], sweep["active"]) == (group, 4, True)

    assert worker.request_stop(again, ids[1]) == "cancelled"  # a queued run can be cancelled
    claimed = []
    while (run := again.claim_next(1, "host")) is not None:  # the worker's order
        claimed.append(run["id"])
        again.finish_run(run["id"], "finished")
    assert claimed == [ids[0], ids[2], ids[3]]
    assert [p["status"] for p in compare.sweep_points(again, group)] == ["finished", "cancelled", "finished", "finished"]


# -- pages ------------------------------------------------------------------------------------------
def open_page(page: str, runs_dir: Path, monkeypatch, ws: str | None = None) -> AppTest:
    """The router first (as a browser), then ``pages/<page>.py``, with the store at ``runs_dir``
    (``ws``: in that workspace, as its link would open it)."""
    monkeypatch.setenv("TL_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    if ws:
        at.query_params["ws"] = ws
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_renders_two_runs(trained, monkeypatch):
    store, a, b = trained
    at = open_page("compare", store.root, monkeypatch)
    assert set(at.multiselect(key="w_cmp_runs").value) == {a, b}
    table = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert set(table.loc[table["≠"] == "≠", "field"]) >= {"freeze plan", "trainable params", "BN mode"}
    assert "model" in set(table.loc[table["≠"] == "", "field"])
    assert at.selectbox(key="w_cmp_sweep").value == "sweep-test"
    assert at.selectbox(key="w_cmp_drift_run").value == a  # the partial fine-tune: frozen and trainable blocks
    # the drift was measured: no warning but the honest-uncertainty note (tiny val sets overlap)
    others = [w.value for w in at.warning if not w.value.startswith("95% intervals overlap")]
    assert not others, others
    assert len(at.get("plotly_chart")) == 4  # loss, accuracy, sweep, drift
    at.toggle(key="cmp_only_diff").set_value(True).run()
    assert not at.exception
    table = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert set(table["≠"]) == {"≠"}
    at.multiselect(key="w_cmp_runs").set_value([b]).run()
    at.button(key="cmp_use_sweep").click().run()  # "Compare these runs above": the whole sweep
    assert not at.exception and at.multiselect(key="w_cmp_runs").value == [a, b]


def test_compare_page_empty_store_says_what_to_do(tmp_path, monkeypatch):
    at = open_page("compare", tmp_path / "empty", monkeypatch)
    assert "No finished runs yet" in at.info[0].value


def test_learn_page_queues_sweep_and_cancels(trained, tmp_path, monkeypatch):
    store, _, _ = trained
    assert "No sweep yet" in open_page("learn", store.root, monkeypatch).info[0].value  # not someone else's
    ws = workspaces.create_workspace(store)
    with store._tx() as con:  # the sweep-test runs are this workspace's
        con.execute("UPDATE runs SET workspace=? WHERE group_id='sweep-test'", (ws,))
    at = open_page("learn", store.root, monkeypatch, ws=ws)
    queue = at.button(key="learn_queue")  # raises if missing; then it must be usable
    assert queue.label == "Queue the sweep" and not queue.disabled
    plan = at.dataframe[0].value
    assert list(plan["run"]) == ["freeze=head", "freeze=7", "freeze=4", "freeze=none", "from scratch"]
    assert at.get("plotly_chart")  # the finished sweep-test group is shown with its chart
    at.button(key="learn_to_compare").click().run()  # opens Compare on that sweep, its runs picked
    assert not at.exception, at.exception
    assert at.session_state["cmp_sweep"] and len(at.session_state["cmp_runs"]) >= 1
    assert any("Compare runs" in t.value for t in at.title)

    monkeypatch.setattr(worker, "start_worker", lambda store: None)  # queue only: no background training here
    empty = tmp_path / "learn-runs"
    at = open_page("learn", empty, monkeypatch)
    assert "No sweep yet" in at.info[0].value
    at.button(key="learn_queue").click().run()
    assert not at.exception, at.exception
    queued = RunStore(empty).list_runs("queued")
    assert len(queued) == 5 and len({r["group_id"] for r in queued}) == 1
    assert {r["config"]["data_dir"] for r in queued} == {str(REPO / "sample_data" / "emoji3")}
    assert at.button(key="learn_queue").disabled  # no double queueing while this sweep is active
    first = queued[-1]["id"]
    at.button(key=f"learn_cancel_{first}").click().run()
    assert RunStore(empty).get_run(first)["status"] == "cancelled"
