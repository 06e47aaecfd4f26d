"""The run database can be rebuilt from the run folders: truncated, not SQLite, missing, on request."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tl_dashboard.cli import main
from tl_dashboard.records import RECORD_FILE
from tl_dashboard.runs import RunStore


def _train(runs, data, *extra) -> str:
    code = main(["train", str(data), "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--json", "--runs-dir", str(runs), *extra])
    assert code == 0
    return RunStore(runs).list_runs()[0]["id"]


@pytest.fixture(scope="module")
def trained_store(shapes_dir, tmp_path_factory):
    """A store with two finished runs (two epochs each) and one cancelled queue entry."""
    runs = tmp_path_factory.mktemp("store") / "runs"
    a = _train(runs, shapes_dir, "--label", "first")
    b = _train(runs, shapes_dir, "--label", "second", "--freeze", "none")
    store = RunStore(runs)
    c = store.create_run({"model": "x", "data_dir": str(shapes_dir)}, label="never ran")
    store.request_stop(c)
    return runs, {a: store.get_run(a), b: store.get_run(b), c: store.get_run(c)}, {r: store.epochs(r) for r in (a, b)}


def _copy(trained_store, tmp_path):
    src, runs, epochs = trained_store
    dest = tmp_path / "runs"
    shutil.copytree(src, dest)
    return dest, runs, epochs


def _truncate(db):
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _not_sqlite(db):
    db.write_text("this is not a database, someone copied a text file over it\n" * 50)


def _missing(db):
    db.unlink()


@pytest.mark.parametrize("damage", [_truncate, _not_sqlite, _missing], ids=["truncated", "not-sqlite", "missing"])
def test_damaged_database_is_set_aside_and_rebuilt(trained_store, tmp_path, damage, shapes_dir, capsys):
    runs, before, epochs = _copy(trained_store, tmp_path)
    for suffix in ("-wal", "-shm"):
        (runs / f"runs.db{suffix}").unlink(missing_ok=True)
    original = (runs / "runs.db").read_bytes()
    damage(runs / "runs.db")
    damaged = (runs / "runs.db").read_bytes() if (runs / "runs.db").exists() else None

    assert main(["runs", "--json", "--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    listed = {r["run_id"]: r for r in json.loads(out.strip().splitlines()[-1])}
    assert set(listed) == set(before)
    assert err.count("rebuilt it from 3 run folder(s)") == 1, err
    for run_id, run in before.items():
        assert listed[run_id]["status"] == run["status"]
        assert listed[run_id]["label"] == run["label"]
        assert listed[run_id]["val_accuracy"] == run["summary"].get("val_accuracy")
    store = RunStore(runs)
    for run_id, rows in epochs.items():  # the curves of finished runs come back
        assert [r["val_acc"] for r in store.epochs(run_id)] == [r["val_acc"] for r in rows]
        assert store.steps(run_id)
    aside = sorted(runs.glob("runs.db.damaged-*"))
    if damaged is None:
        assert aside == []
    else:
        assert aside[0].read_bytes() == damaged and damaged != original  # kept, never deleted
    assert store.pop_notices() == []  # said once, by the command that rebuilt it
    with sqlite3.connect(runs / "runs.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    finished = [r for r, run in before.items() if run["status"] == "finished"]
    img = next(shapes_dir.glob("circles/*.png"))
    for run_id in finished:  # the checkpoint is usable for Predict and Export
        assert main(["predict", run_id, str(img), "--json", "--runs-dir", str(runs)]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["top_k"]
        out_dir = tmp_path / f"export-{run_id}"
        assert main(["export", run_id, "--format", "safetensors", "--out", str(out_dir), "--runs-dir", str(runs)]) == 0
        assert list(out_dir.glob("*.safetensors"))


def test_repair_on_request_salvages_the_log_from_a_healthy_file(trained_store, tmp_path, capsys):
    runs, before, _ = _copy(trained_store, tmp_path)
    run_id = next(r for r, run in before.items() if run["status"] == "finished")
    logs = RunStore(runs).logs(run_id)
    assert main(["runs", "--repair", "--runs-dir", str(runs)]) == 0
    err = capsys.readouterr().err
    assert "repaired on request" in err and "run_log" in err
    assert len([p for p in runs.glob("runs.db.before-repair-*") if not p.name.endswith(("-wal", "-shm"))]) == 1
    assert RunStore(runs).logs(run_id) == logs


def test_each_run_folder_keeps_its_record(trained_store):
    runs, before, epochs = trained_store
    for run_id, run in before.items():
        rec = json.loads((runs / run_id / RECORD_FILE).read_text())
        assert rec["run"]["status"] == run["status"] and rec["run"]["config"] == run["config"]
        if run_id in epochs:
            assert len(rec["epochs"]) == 2 and rec["steps"]


def test_backup_taken_while_a_run_trains_restores_a_sound_store(shapes_dir, tmp_path, capsys, monkeypatch):
    """`tl-dashboard backup` during training: the copy passes integrity_check and lists the same runs."""
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.worker import submit_run

    runs = tmp_path / "runs"
    _train(runs, shapes_dir, "--label", "done")
    store = RunStore(runs)
    run_id = submit_run(store, TrainConfig(data_dir=str(shapes_dir), epochs=40, image_size=32, batch_size=4))
    try:
        deadline = time.time() + 300
        while not store.epochs(run_id):  # training, with at least one epoch (and checkpoint) written
            assert time.time() < deadline and store.get_run(run_id)["status"] in ("queued", "running")
            time.sleep(0.2)
        assert main(["backup", str(tmp_path / "backup"), "--json", "--runs-dir", str(runs)]) == 0
        rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert store.get_run(run_id)["status"] == "running"  # it was training all along
    finally:
        store.request_stop(run_id)
    assert rep["integrity"] == "ok" and rep["runs"] == 2
    backup = tmp_path / "backup"
    assert not [p for p in backup.rglob("*") if p.name.endswith(".tmp")]
    with sqlite3.connect(backup / "runs.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    restored = tmp_path / "restored"  # restore = use the copy as the runs folder
    shutil.copytree(backup, restored)
    assert main(["runs", "--json", "--runs-dir", str(restored)]) == 0
    listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
    assert set(listed) == {r["id"] for r in store.list_runs()}
    done = next(r for r in listed.values() if r["label"] == "done")
    img = next(shapes_dir.glob("circles/*.png"))
    assert main(["predict", done["run_id"], str(img), "--runs-dir", str(restored)]) == 0
    assert main(["predict", run_id, str(img), "--runs-dir", str(restored)]) == 0  # its last whole checkpoint
    assert main(["backup", str(backup), "--runs-dir", str(runs)]) == 2  # never overwrites
    assert "not empty" in capsys.readouterr().err


def test_dashboard_says_once_that_the_database_was_rebuilt(trained_store, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parent.parent
    runs, before, _ = _copy(trained_store, tmp_path)
    (runs / "runs.db").write_text("not a database")
    for suffix in ("-wal", "-shm"):
        (runs / f"runs.db{suffix}").unlink(missing_ok=True)
    monkeypatch.setenv("TL_RUNS_DIR", str(runs))
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    toasts = [str(t.value) for t in at.toast]
    assert any("rebuilt it from 3 run folder(s)" in t for t in toasts), toasts
    at.run()
    assert not any("rebuilt" in str(t.value) for t in at.toast)  # said once
    assert {r["id"] for r in RunStore(runs).list_runs()} == set(before)


def test_a_busy_or_unopenable_database_is_never_moved_aside(tmp_path, monkeypatch):
    from tl_dashboard import records

    store = RunStore(tmp_path / "runs")
    store.create_run({"model": "x"})
    real = sqlite3.connect

    class Locked:
        def execute(self, *a):
            raise sqlite3.OperationalError("database is locked")

        def close(self):
            pass

    def locked(*a, **k):
        return Locked()

    monkeypatch.setattr(records.sqlite3, "connect", locked)
    with pytest.raises(sqlite3.OperationalError):
        records.check_database(store.db_path)
    monkeypatch.setattr(records.sqlite3, "connect", real)
    assert not list((tmp_path / "runs").glob("runs.db.*damaged*"))


def test_a_truncated_database_gives_back_the_rows_before_the_cut(tmp_path):
    store = RunStore(tmp_path / "runs")
    ids = []
    for k in range(20):
        run_id = store.create_run({"model": "m", "k": k})
        store.add_steps(run_id, [{"step": i, "epoch": i / 100, "loss": 1.0, "lr": 0.1} for i in range(2000)])
        store.log(run_id, "info", f"line of run {k}")
        store.finish_run(run_id, "finished")
        ids.append(run_id)
    data = store.db_path.read_bytes()
    for suffix in ("-wal", "-shm"):
        (tmp_path / "runs" / f"runs.db{suffix}").unlink(missing_ok=True)
    store.db_path.write_bytes(data[: len(data) // 2])
    rebuilt = RunStore(tmp_path / "runs")
    assert "Read back from it:" in rebuilt.repair_notice and "run_log" in rebuilt.repair_notice  # before the cut
    assert {r["id"] for r in rebuilt.list_runs()} == set(ids)
    assert all(r["status"] == "finished" for r in rebuilt.list_runs())
    assert [line["message"] for line in rebuilt.logs(ids[0])][0] == "line of run 0"
    for run_id in ids:  # at least the thinned curve, spanning the whole run
        steps = rebuilt.steps(run_id)
        assert len(steps) >= 400 and steps[0]["step"] == 0 and steps[-1]["step"] == 1999


_WRITER = """
import sys, time
from tl_dashboard.runs import RunStore
store, run_id, until = RunStore(sys.argv[1]), sys.argv[2], time.time() + float(sys.argv[3])
step = 0
print("writing", flush=True)
while time.time() < until:  # what a training worker writes, as fast as it can
    store.add_steps(run_id, [{"step": step + i, "epoch": 0.0, "loss": 1.0} for i in range(8)])
    store.heartbeat(run_id, {"step": step})
    store.log(run_id, "info", f"step {step}")
    step += 8
"""


def test_checking_the_store_keeps_the_locks_of_this_process_connections(tmp_path):
    """The open check reads runs.db through SQLite only: closing a plain descriptor of the file would drop
    every lock this process holds on it, and another process would delete the -wal still in use here."""
    from tl_dashboard import records

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run({"model": "m"})
    con = store._connect()  # another session's connection, open in the same server process
    try:
        con.execute("SELECT COUNT(*) FROM runs").fetchone()
        records._CHECKED.clear()
        assert RunStore(tmp_path / "runs").repair_notice is None  # a new session opens (and checks) the store
        code = "import sys; from tl_dashboard.runs import RunStore; RunStore(sys.argv[1]).log(sys.argv[2], 'info', 'x')"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs"), run_id], check=True, timeout=60)
        assert (tmp_path / "runs" / "runs.db-wal").exists()  # it knew a connection was still open here
    finally:
        con.close()


def test_a_live_store_opened_again_and_again_is_never_repaired(tmp_path):
    """A worker process writes; this process writes too (a server) and opens the store over and over, checking
    it each time (as each new process does); then the worker is killed mid-write and the store opened again:
    never taken for damage, never moved aside, never corrupted, every whole transaction of the worker kept."""
    from tl_dashboard import records

    runs = tmp_path / "runs"
    store = RunStore(runs)
    run_id, other = store.create_run({"model": "m"}), store.create_run({"model": "n"})
    worker = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(runs), run_id, "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert worker.stdout.readline().strip() == "writing"
    done, notices = threading.Event(), []

    def server_writes():
        while not done.is_set():
            with store._tx() as con:  # a session's transaction, open a moment
                con.execute("INSERT INTO run_log (run_id, time, level, message) VALUES (?,?,?,?)", (other, time.time(), "info", "x"))
                time.sleep(0.002)

    thread = threading.Thread(target=server_writes)
    thread.start()
    try:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert worker.poll() is None, worker.stderr.read()[-500:]  # the worker never met a damaged database
            records._CHECKED.clear()
            notices.append(RunStore(runs).repair_notice)
    finally:
        worker.kill()  # SIGKILL, most likely in the middle of a write
        worker.communicate()
        done.set()
        thread.join()
    records._CHECKED.clear()
    notices.append(RunStore(runs).repair_notice)  # opened after the killed worker
    assert len(notices) > 5 and notices == [None] * len(notices) and not list(runs.glob("runs.db.*"))
    with sqlite3.connect(runs / "runs.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    steps = [s["step"] for s in store.steps(run_id)]
    assert steps and len(steps) % 8 == 0 and steps == list(range(len(steps)))


def _swap_first_and_last_leaf(db, table):
    """Damage ``table``'s tree as pages from two versions of the file do: its first and last leaves trade
    places, so reading on from a rowid hands back lower rowids (the same chunk again and again)."""
    with sqlite3.connect(db) as con:
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()
        (size,) = con.execute("PRAGMA page_size").fetchone()
    data = bytearray(db.read_bytes())
    page = data[(root - 1) * size : root * size]
    assert page[0] == 0x05  # an interior page whose children are the leaves
    cell = int.from_bytes(page[12:14], "big")
    first, last = int.from_bytes(page[cell : cell + 4], "big"), int.from_bytes(page[8:12], "big")
    a, b = (first - 1) * size, (last - 1) * size
    assert data[a] == data[b] == 0x0D  # two leaves
    data[a : a + size], data[b : b + size] = data[b : b + size], data[a : a + size]
    db.write_bytes(bytes(data))


def test_salvage_of_a_tree_out_of_rowid_order_ends(tmp_path):
    """Rows read back out of order (the same chunk again and again) never make the rebuild loop: it
    stops, keeps what it copied once each, and says the run log came back only in part."""
    runs = tmp_path / "runs"
    store = RunStore(runs)
    run_id = store.create_run({"model": "m"})
    with store._tx() as con:
        con.executemany(
            "INSERT INTO run_log (run_id, time, level, message) VALUES (?,?,?,?)",
            [(run_id, float(i), "info", f"line {i:04d} of the log of this run") for i in range(1000)],
        )
    with sqlite3.connect(store.db_path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (runs / f"runs.db{suffix}").unlink(missing_ok=True)
    _swap_first_and_last_leaf(store.db_path, "run_log")
    code = "import sys; from tl_dashboard.runs import RunStore; print(RunStore(sys.argv[1]).repair_notice)"
    out = subprocess.run([sys.executable, "-c", code, str(runs)], capture_output=True, text=True, timeout=120)  # a hang fails
    assert "damaged" in out.stdout and "run_log (" in out.stdout, out.stdout + out.stderr  # read in part
    messages = [line["message"] for line in RunStore(runs).logs(run_id)]
    kept = [m for m in messages if m.startswith("line ")]
    assert kept and len(kept) == len(set(kept)) and len(kept) < 1000  # each line once, the damaged part left out


def test_salvage_copies_every_row_of_a_large_table_a_chunk_per_transaction(tmp_path, monkeypatch):
    from tl_dashboard import records

    store = RunStore(tmp_path / "runs")
    run_id = store.create_run({"model": "m"})
    store.add_steps(run_id, [{"step": i, "epoch": i / 1000, "loss": 1.0 / (i + 1), "lr": 0.1} for i in range(25_000)])
    with store._tx() as con:
        con.executemany(
            "INSERT INTO run_log (run_id, time, level, message) VALUES (?,?,?,?)", [(run_id, 0.0, "info", f"{k}") for k in range(5000)]
        )
    steps, logs = store.steps(run_id), store.logs(run_id)
    chunks = []

    class Counting(sqlite3.Connection):
        def executemany(self, sql, rows):
            if sql.startswith("INSERT OR IGNORE INTO main.step_metrics"):
                chunks.append((self.in_transaction, len(rows)))
            return super().executemany(sql, rows)

    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, factory=Counting, **k))
    rep = records.repair_store(store, None)
    assert "step_metrics" in rep.salvaged and "run_log" in rep.salvaged  # read in full
    assert store.steps(run_id) == steps and store.logs(run_id)[: len(logs)] == logs  # every row, in order
    assert chunks == [(True, 2000)] * 12 + [(True, 1000)]  # each chunk one transaction, not one per row
    assert records._salvage(store, store.db_path) == []  # never a table into itself
