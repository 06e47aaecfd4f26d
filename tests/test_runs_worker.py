import os
import signal
import socket
import sqlite3
import time

import pytest

from tl_dashboard.engine import TrainConfig
from tl_dashboard.runs import RunStore
from tl_dashboard.worker import reap, request_stop, submit_run


def _wait(store, run_id, statuses, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        run = store.get_run(run_id)
        if run["status"] in statuses:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {store.get_run(run_id)['status']}; log: {store.logs(run_id)}")


def test_store_roundtrip_wal_and_claim_order(tmp_path):
    store = RunStore(tmp_path)
    mode = sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    a = store.create_run({"model": "a"}, label="first")
    b = store.create_run({"model": "b"})
    assert (store.run_dir(a) / "config.json").exists()
    assert store.claim_next(1, "h", max_running=1)["id"] == a
    assert store.claim_next(2, "h", max_running=1) is None  # one slot
    store.add_steps(a, [{"step": 1, "epoch": 0.5, "loss": 1.0, "lr": 0.1}])
    store.add_epoch(a, {"epoch": 1, "val_acc": 0.5})
    # a reader during an open write transaction is not blocked (WAL)
    writer = sqlite3.connect(store.db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE runs SET label='x' WHERE id=?", (a,))
    assert store.get_run(a)["label"] == "first"
    writer.execute("COMMIT")
    store.finish_run(a, "finished", {"val_accuracy": 0.5})
    assert store.get_run(a)["summary"]["val_accuracy"] == 0.5
    assert store.request_stop(b) == "cancelled"
    with pytest.raises(ValueError):
        store.finish_run(a, "weird")


def test_delete_only_on_purpose_and_never_active(tmp_path):
    store = RunStore(tmp_path)
    a = store.create_run({})
    with pytest.raises(ValueError, match="stop it"):
        store.delete_run(a)
    store.request_stop(a)
    store.delete_run(a)
    assert store.get_run(a) is None and not store.run_dir(a).exists()


def test_dead_worker_is_marked_interrupted(tmp_path):
    store = RunStore(tmp_path)
    a = store.create_run({})
    store.claim_next(2**22 + 12345, socket.gethostname())  # a pid that does not exist
    assert reap(store) == [a]
    run = store.get_run(a)
    assert run["status"] == "interrupted" and "died" in run["error"]


@pytest.mark.slow
def test_background_run_finishes_and_a_second_queues_behind_it(shapes_dir, tmp_path):
    store = RunStore(tmp_path)
    cfg = TrainConfig(data_dir=str(shapes_dir), epochs=2, batch_size=8, image_size=32)
    a = submit_run(store, cfg, label="a")
    b = submit_run(store, cfg, label="b")  # one training process at a time: b waits
    assert not store.has_checkpoint(b)
    ra = _wait(store, a, ("finished", "failed"))
    rb = _wait(store, b, ("finished", "failed"))
    assert ra["status"] == rb["status"] == "finished", (ra["error"], rb["error"])
    assert rb["started"] >= ra["finished"] - 0.5
    assert len(store.epochs(a)) == 2 and store.steps(a)
    assert (store.run_dir(a) / "model.safetensors").exists() and store.has_checkpoint(a)


@pytest.mark.slow
def test_stop_and_sigkill(shapes_dir, tmp_path):
    store = RunStore(tmp_path)
    cfg = TrainConfig(data_dir=str(shapes_dir), epochs=400, batch_size=2, image_size=32, freeze="none")
    a = submit_run(store, cfg)
    run = _wait(store, a, ("running",))
    end = time.monotonic() + 60
    while not store.steps(a) and time.monotonic() < end:
        time.sleep(0.2)
    request_stop(store, a)
    run = _wait(store, a, ("stopped",))
    if run["summary"]["epochs"] == 0:  # stopped inside epoch 1: no model, no score (review finding 1)
        assert not (store.run_dir(a) / "model.safetensors").exists() and run["summary"]["best_val_accuracy"] is None
    else:
        assert (store.run_dir(a) / "model.safetensors").exists()
    assert (store.run_dir(a) / "summary.json").exists()

    b = submit_run(store, cfg)
    run = _wait(store, b, ("running",))
    while not store.steps(b) and time.monotonic() < end + 60:
        time.sleep(0.2)
    os.kill(store.get_run(b)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while store.get_run(b)["status"] == "running" and time.monotonic() < deadline:
        reap(store)
        time.sleep(0.2)
    run = store.get_run(b)
    assert run["status"] == "interrupted" and "died" in run["error"]


def test_out_of_memory_and_bad_input_fail_cleanly(tmp_path, shapes_dir, monkeypatch):
    from tl_dashboard import worker

    store = RunStore(tmp_path)
    cfg = TrainConfig(data_dir=str(shapes_dir), epochs=1, image_size=32)

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(worker, "train", oom)
    a = store.create_run(cfg.to_dict())
    store.mark_running(a, os.getpid(), socket.gethostname())
    assert worker.run_training(store, a) is None
    run = store.get_run(a)
    assert run["status"] == "failed" and "Lower the batch size or the image size" in run["error"]
    monkeypatch.undo()

    b = store.create_run(TrainConfig(data_dir=str(tmp_path / "missing")).to_dict())
    store.mark_running(b, os.getpid(), socket.gethostname())
    worker.run_training(store, b)
    run = store.get_run(b)
    assert run["status"] == "failed" and "Data folder not found" in run["error"] and "Traceback" not in run["error"]


def test_store_survives_a_kill_in_the_middle_of_writes(tmp_path):
    import subprocess
    import sys

    store = RunStore(tmp_path)
    run_id = store.create_run({})
    code = (
        "import sys; from tl_dashboard.runs import RunStore\n"
        f"s = RunStore({str(tmp_path)!r})\n"
        "i = 0\n"
        "while True:\n"
        f"    s.add_steps({run_id!r}, [{{'step': i * 50 + j, 'epoch': 0.0, 'loss': 1.0}} for j in range(50)])\n"
        "    i += 1\n"
        "    if i == 5: print('writing', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    reopened = RunStore(tmp_path)  # as after a restart of the app
    con = sqlite3.connect(reopened.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    steps = [s["step"] for s in reopened.steps(run_id)]
    assert len(steps) % 50 == 0 and steps == list(range(len(steps)))  # whole transactions only
    assert reopened.get_run(run_id)["status"] == "queued"


def test_live_view_is_shared_read_once_per_age_and_fresh_on_demand(tmp_path):
    """A class watching one run: one store read per max_age for all, new steps read incrementally,
    a fresh read whenever asked (a click), figures built once per view, a resumed run read whole."""
    from tl_dashboard import liveview

    liveview.forget()
    store = RunStore(tmp_path)
    a = store.create_run({"epochs": 3})
    store.claim_next(os.getpid(), socket.gethostname())
    store.add_steps(a, [{"step": s, "epoch": s / 10, "loss": 1.0 / s, "lr": 0.1} for s in (1, 2)])
    first = liveview.run_view(store, a, max_age=60)
    assert [s["step"] for s in first.steps] == [1, 2] and first.run["status"] == "running"
    store.add_steps(a, [{"step": 3, "epoch": 0.3, "loss": 0.3, "lr": 0.1}])
    assert liveview.run_view(RunStore(tmp_path), a, max_age=60) is first  # another session, another RunStore: shared
    built = []
    assert first.memo("loss", lambda: built.append(1) or "fig") == first.memo("loss", lambda: built.append(1) or "other") == "fig"
    assert built == [1]
    fresh = liveview.run_view(store, a, max_age=0)  # a click: read now
    assert fresh is not first and [s["step"] for s in fresh.steps] == [1, 2, 3]
    assert liveview.run_view(store, a, max_age=60) is fresh  # and the next poll shares it
    store.add_epoch(a, {"epoch": 1, "val_acc": 0.5})
    store.finish_run(a, "stopped", {"epochs": 1})
    store.requeue_from(a, 0, 1)  # resumed: steps after 1 are dropped
    again = liveview.run_view(store, a, max_age=0)
    assert [s["step"] for s in again.steps] == [1] and again.epochs == [] and again.run["status"] == "queued"
    store.request_stop(a)
    store.delete_run(a)
    assert liveview.run_view(store, a, max_age=0) is None


def test_reap_at_most_every_skips_repeat_checks(tmp_path):
    store = RunStore(tmp_path)
    assert reap(store, at_most_every=60) == []  # checks (nothing dead), and remembers when
    a = store.create_run({})
    store.claim_next(2**22 + 12345, socket.gethostname())  # a worker that does not exist
    assert reap(store, at_most_every=60) == []  # within the minute: skipped
    assert store.get_run(a)["status"] == "running"
    assert reap(store) == [a]  # without the bound: always checks
