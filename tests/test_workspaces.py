"""Workspaces, owned runs, the fair queue and owned uploads: the core, no Streamlit, no training."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.files import png_bytes, zip_bytes
from tl_dashboard import datasets, fairqueue, workspaces
from tl_dashboard.data import DataError
from tl_dashboard.runs import RunStore


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.delenv("TL_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("TL_MAX_QUEUED_PER_WORKSPACE", raising=False)
    return RunStore(tmp_path / "runs")


def _claim_all(store: RunStore) -> list[str]:
    order = []
    while (run := store.claim_next(1, "host", max_running=1)) is not None:
        order.append(run["label"])
        store.finish_run(run["id"], "finished")
    return order


def test_queue_is_round_robin_across_workspaces(store):
    a, b, c = (workspaces.create_workspace(store, n) for n in "ABC")
    for i in range(5):  # A queues a five-run sweep first ...
        store.create_run({}, label=f"A{i}", workspace=a)
    store.create_run({}, label="B0", workspace=b)  # ... then B and C one run each, and B a second
    store.create_run({}, label="C0", workspace=c)
    store.create_run({}, label="B1", workspace=b)
    store.create_run({}, label="legacy")  # no owner: a lane of its own
    planned = fairqueue.queue_view(store)
    assert [p["position"] for p in planned] == list(range(1, 10))
    order = _claim_all(store)
    assert order == ["A0", "B0", "C0", "legacy", "A1", "B1", "A2", "A3", "A4"]
    labels = {r["id"]: r["label"] for r in store.list_runs()}
    assert [labels[p["id"]] for p in planned] == order  # the queue view predicts the real order


def test_least_recently_served_workspace_goes_first(store):
    a, b = workspaces.create_workspace(store), workspaces.create_workspace(store)
    first = store.create_run({}, label="A-early", workspace=a)
    assert store.claim_next(1, "h")["id"] == first  # A has just been served ...
    store.finish_run(first, "finished")
    store.create_run({}, label="A-next", workspace=a)
    store.create_run({}, label="B-first", workspace=b)  # ... so B, queued later, starts before A's next run
    assert _claim_all(store) == ["B-first", "A-next"]


def test_queue_view_positions_and_estimates_for_one_workspace(store):
    a, b = workspaces.create_workspace(store), workspaces.create_workspace(store)
    done = store.create_run({}, workspace=a)
    store.claim_next(1, "h")
    store.finish_run(done, "finished")
    with store._tx() as con:  # a finished run that took 100 s: the typical duration
        con.execute("UPDATE runs SET started=finished-100 WHERE id=?", (done,))
    for _ in range(2):
        store.create_run({}, workspace=a)
    store.create_run({}, workspace=b)
    mine = fairqueue.queue_view(store, b)
    assert [(q["position"], q["ahead"]) for q in mine] == [(1, 0)]  # B was never served: first in line
    theirs = fairqueue.queue_view(store, a)
    assert [q["position"] for q in theirs] == [2, 3]
    assert [round(q["wait_s"]) for q in theirs] == [100, 200]  # one slot on this machine, 100 s per run


def test_queue_limit_per_workspace_and_admin_exemption(store, monkeypatch):
    ws = workspaces.create_workspace(store)
    monkeypatch.setenv("TL_MAX_QUEUED_PER_WORKSPACE", "2")
    monkeypatch.setenv("TL_ADMIN_PASSWORD", "s3cret")
    fairqueue.check_queue_limit(store, ws, 2)
    store.create_run({}, workspace=ws)
    store.create_run({}, workspace=ws)
    with pytest.raises(fairqueue.QueueFull, match="allows 2 per person"):
        fairqueue.check_queue_limit(store, ws, 1)
    fairqueue.check_queue_limit(store, ws, 1, admin=True)
    fairqueue.set_max_queued_per_workspace(store, 5)  # the teacher raises it at runtime
    fairqueue.check_queue_limit(store, ws, 3)
    fairqueue.set_max_queued_per_workspace(store, None)
    assert fairqueue.max_queued_per_workspace(store) == 2


def test_max_running_defaults_to_the_machine(monkeypatch):
    monkeypatch.delenv("TL_MAX_RUNNING", raising=False)
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 1
    assert fairqueue.max_running() == max(1, expected)
    monkeypatch.setenv("TL_MAX_RUNNING", "3")
    assert fairqueue.max_running() == 3


def test_ownership_is_checked_in_the_core(store, monkeypatch):
    alice, bob = workspaces.create_workspace(store, "Alice"), workspaces.create_workspace(store, "Bob")
    run = store.create_run({}, label="alice's", workspace=alice)
    with pytest.raises(workspaces.NotYourRun, match="belongs to another workspace"):
        workspaces.stop_run(store, run, bob)
    with pytest.raises(workspaces.NotYourRun):
        workspaces.stop_run(store, run, bob, admin_password="guess")  # no admin password set: nobody is admin
    monkeypatch.setenv("TL_ADMIN_PASSWORD", "s3cret")
    with pytest.raises(workspaces.NotYourRun):
        workspaces.stop_run(store, run, bob, admin_password="s3cre")
    assert store.get_run(run)["status"] == "queued"  # every refusal left it alone
    assert workspaces.stop_run(store, run, alice) == "cancelled"  # the owner may
    with pytest.raises(workspaces.NotYourRun):
        workspaces.delete_run(store, run, bob)
    workspaces.delete_run(store, run, bob, admin_password="s3cret")  # the teacher may
    assert store.get_run(run) is None
    other = store.create_run({}, workspace=alice)
    assert store.claim_next(1, "h")["id"] == other
    assert workspaces.stop_run(store, other, None, admin_password="s3cret") == "running"
    assert store.stop_requested(other)
    assert workspaces.list_runs(store, bob, mine=True) == []
    assert [r["id"] for r in workspaces.list_runs(store, alice, mine=True)] == [other]
    assert len(workspaces.list_runs(store, bob)) == 1  # everyone's runs stay visible


def test_admin_password_compared_in_constant_time_and_only_when_set(monkeypatch):
    monkeypatch.delenv("TL_ADMIN_PASSWORD", raising=False)
    assert not workspaces.is_admin("") and not workspaces.is_admin(None) and not workspaces.admin_configured()
    monkeypatch.setenv("TL_ADMIN_PASSWORD", "pässword")
    assert workspaces.is_admin("pässword") and not workspaces.is_admin("password")


def test_choices_persist_per_workspace_and_across_tabs(store):
    ws = workspaces.create_workspace(store, "  Ada   L. ")
    assert workspaces.get_workspace(store, ws)["name"] == "Ada L."
    keys = ["model", "freeze", "lr"]
    tab1 = {"model": "resnet18", "freeze": "head", "lr": 1e-3}
    workspaces.sync_state(store, ws, tab1, keys, phase="in")
    tab1["freeze"] = "3"
    assert workspaces.sync_state(store, ws, tab1, keys, phase="out") == ["freeze"]
    tab2 = {"model": "x", "freeze": "x", "lr": 0.0}  # a second tab (or a reload) starts from defaults
    workspaces.sync_state(store, ws, tab2, keys, phase="in")
    assert {k: tab2[k] for k in keys} == {"model": "resnet18", "freeze": "3", "lr": 1e-3}
    tab2["lr"] = 3e-4  # tab 2 changes the lr only ...
    workspaces.sync_state(store, ws, tab2, keys, phase="out")
    tab1["model"] = "mobilenetv3_small_100"  # ... tab 1 the model only: neither undoes the other
    assert workspaces.sync_state(store, ws, tab1, keys, phase="out") == ["model"]
    assert workspaces.sync_state(store, ws, tab1, keys, phase="in") == ["lr"]
    assert workspaces.load_state(store, ws) == {"model": "mobilenetv3_small_100", "freeze": "3", "lr": 3e-4}
    other = workspaces.create_workspace(store)
    assert workspaces.load_state(store, other) == {}


def test_unknown_or_malformed_workspace_links_get_a_new_workspace(store):
    ws, created = workspaces.open_workspace(store, None)
    assert created and workspaces.valid_workspace_id(ws) and len(ws) >= 20
    assert workspaces.open_workspace(store, ws) == (ws, False)
    for bad in ("nope", "x" * 30, "../../etc", "' OR 1=1 --"):
        new, created = workspaces.open_workspace(store, bad)
        assert created and new != bad


# -- a store made before workspaces --------------------------------------------------------------
OLD_SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, label TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, config TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '{}',
    progress TEXT NOT NULL DEFAULT '{}', error TEXT, pid INTEGER, host TEXT, heartbeat REAL,
    stop_requested INTEGER NOT NULL DEFAULT 0, group_id TEXT);
CREATE TABLE step_metrics (run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch REAL NOT NULL, loss REAL, lr REAL,
    time REAL, PRIMARY KEY (run_id, step));
INSERT INTO runs (id, label, status, created, config) VALUES ('old-1', 'before', 'queued', 1.0, '{"data_dir": "/d/pets"}');
INSERT INTO runs (id, label, status, created, config) VALUES ('old-2', 'done', 'finished', 2.0, '{}');
"""


def test_a_store_made_before_workspaces_still_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_ADMIN_PASSWORD", "s3cret")
    root = tmp_path / "old"
    root.mkdir()
    con = sqlite3.connect(root / "runs.db")
    con.executescript(OLD_SCHEMA)
    con.close()
    store = RunStore(root)
    runs = {r["id"]: r for r in store.list_runs()}
    assert runs["old-1"]["workspace"] is None and runs["old-1"]["dataset"] == {}
    assert datasets.dataset_label(runs["old-1"]) == "pets"  # named from its config
    ws = workspaces.create_workspace(store)
    assert len(workspaces.list_runs(store, ws)) == 2  # visible to all ...
    with pytest.raises(workspaces.NotYourRun, match="belongs to nobody"):
        workspaces.stop_run(store, "old-1", ws)  # ... stoppable only by the admin
    with pytest.raises(workspaces.NotYourRun):
        workspaces.delete_run(store, "old-2", ws)
    assert workspaces.stop_run(store, "old-1", ws, admin_password="s3cret") == "cancelled"
    new = store.create_run({}, workspace=ws)
    assert store.claim_next(1, "h")["id"] == new


# -- uploads -------------------------------------------------------------------------------------


def _png(colour) -> bytes:
    return png_bytes((24, 24), colour)


def test_zip_with_one_top_folder_registers_its_class_folders(store):
    ws = workspaces.create_workspace(store)
    data = zip_bytes({f"pets/{c}/{i}.png": _png((40 * i, 200 if c == "cats" else 0, 0)) for c in ("cats", "dogs") for i in range(3)})
    info = datasets.import_zip_upload(store, ws, data, "pets.zip")
    assert Path(info["path"]).name == "pets" and info["classes"] == 2 and info["images"] == 6
    listed = datasets.list_datasets(store, ws)
    assert [(d["name"], d["classes"], d["images"]) for d in listed] == [("pets", 2, 6)]
    assert datasets.list_datasets(store, workspaces.create_workspace(store)) == []  # not another's
    rec = datasets.dataset_record(store, info["path"])
    assert rec["fingerprint"] == info["fingerprint"] and rec["images"] == 6


@pytest.mark.parametrize(
    "files",
    [
        {"readme.txt": b"no images"},  # empty
        {"only/a.png": _png((1, 2, 3)), "only/b.png": _png((3, 2, 1))},  # one class
        {"a/1.png": _png((1, 2, 3)), "b/broken.png": b"not a png"},  # one usable class
    ],
)
def test_failed_uploads_keep_the_previous_data(store, files):
    ws = workspaces.create_workspace(store)
    good = datasets.import_zip_upload(
        store, ws, zip_bytes({f"{c}/{i}.png": _png((90 * i, 50, 0 if c == "x" else 200)) for c in "xy" for i in range(3)}), "good.zip"
    )
    before = sorted(p.name for p in Path(good["path"]).parent.iterdir())
    with pytest.raises(DataError, match="data in use is unchanged"):
        datasets.import_zip_upload(store, ws, zip_bytes(files), "bad.zip")
    assert [d["path"] for d in datasets.list_datasets(store, ws)] == [good["path"]]  # never offered
    assert sorted(p.name for p in Path(good["path"]).parent.iterdir()) == before  # and removed from disk
    with pytest.raises(DataError):
        datasets.import_folder_upload(store, ws, {"only": [("a.png", _png((1, 1, 1))), ("b.png", _png((2, 2, 2)))]}, "one-class")
    assert len(datasets.list_datasets(store, ws)) == 1


def test_submitted_runs_record_owner_and_data_set(store, shapes_dir):
    from tl_dashboard.engine import TrainConfig

    ws = workspaces.create_workspace(store)
    run_id = workspaces.submit(store, TrainConfig(data_dir=str(shapes_dir)), ws, label="mine", start=False)
    run = store.get_run(run_id)
    assert run["workspace"] == ws
    assert run["dataset"]["name"] == shapes_dir.name and run["dataset"]["path"] == str(shapes_dir.resolve())
    _group, ids = workspaces.submit_sweep(store, TrainConfig(data_dir=str(shapes_dir)), ["head", "none"], ws, start=False)
    assert all(store.get_run(i)["workspace"] == ws for i in ids)


def test_a_run_records_what_it_trained_on(store, shapes_dir):
    from tl_dashboard.data import scan_images
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.worker import run_training

    ws = workspaces.create_workspace(store)
    run_id = workspaces.submit(store, TrainConfig(data_dir=str(shapes_dir), epochs=1, batch_size=8, image_size=32), ws, start=False)
    store.claim_next(1, "h")
    run_training(store, run_id)
    d = store.get_run(run_id)["dataset"]
    split = scan_images(shapes_dir)
    assert d["images"] == len(split.train) + len(split.val) and d["classes"] == 2
    assert d["fingerprint"] == split.fingerprint()
    assert datasets.dataset_label(store.get_run(run_id)) == f"{shapes_dir.name} · {d['images']} images"


def test_app_command_ends_its_server_on_sigterm(tmp_path):
    """`tl-dashboard app` is the Streamlit server (exec): SIGTERM to its pid frees the port, and the
    admin password is not on any command line."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TL_OFFLINE": "1",
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "STREAMLIT_SERVER_HEADLESS": "true",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tl_dashboard.cli", "app", "--port", str(port), "--admin-password", "pw-on-argv"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the server did not come up")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"streamlit" in cmdline and b"pw-on-argv" not in cmdline  # exec'd: the password left argv
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_one_worker_per_gpu_by_default(store, monkeypatch):
    """With several GPUs and TL_MAX_RUNNING unset, each new worker gets a GPU no live worker holds."""
    import os

    from tl_dashboard import worker

    monkeypatch.delenv("TL_MAX_RUNNING", raising=False)
    monkeypatch.setattr(fairqueue, "default_max_running", lambda: 2)
    assert worker._free_gpu(store) == 0
    (worker._workers_dir(store) / str(os.getpid())).write_text("0")  # a live worker on GPU 0
    assert worker._free_gpu(store) == 1
    (worker._workers_dir(store) / str(os.getppid())).write_text("1")
    assert worker._free_gpu(store) is None
    monkeypatch.setenv("TL_MAX_RUNNING", "4")  # the host said how many: no pinning
    assert worker._free_gpu(store) is None
