"""Atomic writes and the named disk-full error, on a real small file system (tmpfs) where we may mount one."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tl_dashboard.cli import main
from tl_dashboard.errors import UserError
from tl_dashboard.storage import (
    DiskFull,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    check_free_space,
    is_disk_full,
    remove_temp_files,
)


def mount_small_fs(path: Path, size_mb: int) -> str | None:
    """Mount a size-limited tmpfs at ``path``; return None, or why it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a size-limited tmpfs (CI runs the tests as root)"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -t tmpfs failed here: {proc.stderr.strip() or proc.returncode}"
    return None


@pytest.fixture
def small_fs(tmp_path, request):
    """A size-limited tmpfs (16 MB, or the test's ``size_mb`` param) where the tests run as root, as CI does;
    skips, saying why, where mounting is not allowed. Unmounted in a finally."""
    mnt = tmp_path / "small"
    why = mount_small_fs(mnt, getattr(request, "param", 16))
    if why:
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    atomic_write_json(tmp_path / "a" / "x.json", {"a": 2})
    assert (tmp_path / "a" / "x.json").read_text().count('"a": 2') == 1
    assert _temp_files(tmp_path) == []


def test_failed_write_removes_its_temp_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_open(tmp_path / "y.bin") as fh:
        fh.write(b"half")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "y.bin").exists() and _temp_files(tmp_path) == []


def test_check_free_space_names_folder_numbers_and_fix(tmp_path):
    with pytest.raises(DiskFull) as err:
        check_free_space(tmp_path, 10**18, "the checkpoints of 3 epochs")
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    assert str(tmp_path) in msg and "needs 1000000.0 TB" in msg and "free" in msg and "Fix:" in msg


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    (tmp_path / ".model.safetensors.999999999.tmp").write_bytes(b"x")
    (tmp_path / "keep.json").write_text("{}")
    assert [p.name for p in remove_temp_files(tmp_path)] == [".model.safetensors.999999999.tmp"]
    assert (tmp_path / "keep.json").exists()


def test_disk_full_on_a_real_small_file_system(small_fs):
    """A write bigger than the disk: DiskFull with one line, the old file kept, no temp file left."""
    target = small_fs / "run" / "model.safetensors"
    atomic_write_bytes(target, b"old")
    with pytest.raises(DiskFull) as err:
        atomic_write_bytes(target, os.urandom(20 * 1024 * 1024))
    assert is_disk_full(err.value) and str(small_fs / "run") in str(err.value)
    assert "needs 21.0 MB" in str(err.value)
    assert target.read_bytes() == b"old"
    assert _temp_files(small_fs) == []
    atomic_write_bytes(target, os.urandom(1024 * 1024))  # space is there again: writes work


def _fill(folder: Path) -> Path:
    """Write a ballast file until the disk is full (someone else's upload); return it."""
    ballast = folder / "ballast.bin"
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return ballast


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_train_refused_before_it_starts_when_the_checkpoints_cannot_fit(small_fs, shapes_dir, capsys):
    runs = small_fs / "runs"
    code = main(["train", str(shapes_dir), "--epochs", "2", "--image-size", "32", "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2
    [line] = _error_lines(err)
    assert line.startswith("error: Disk full: a run of 2 epoch(s)") and str(runs) in line
    assert re.search(r"needs [\d.]+ MB, [\d.]+ MB free", line) and "TL_RUNS_DIR" in line
    assert _temp_files(small_fs) == []
    assert main(["runs", "--json", "--runs-dir", str(runs)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("small_fs", [64], indirect=True)
def test_a_run_that_fills_the_disk_ends_failed_and_the_store_recovers(small_fs, shapes_dir, capsys, monkeypatch):
    """The disk fills during the run (another writer takes all the rest when epoch 1 ends): the run ends
    failed with one line naming its folder, no temporary file stays, `runs` answers on the full disk, and
    once space is freed a new run trains."""
    import tl_dashboard.cli as cli

    runs = small_fs / "runs"
    filled: list[Path] = []
    say = cli._Progress.say

    def say_and_fill(self, msg: str) -> None:  # the CLI prints "epoch 1: ..." when epoch 1 ends
        say(self, msg)
        if msg.startswith("epoch 1:") and not filled:
            filled.append(_fill(small_fs))

    monkeypatch.setattr(cli._Progress, "say", say_and_fill)
    code = main(["train", str(shapes_dir), "--epochs", "3", "--image-size", "32", "--batch-size", "4", "--runs-dir", str(runs)])
    monkeypatch.setattr(cli._Progress, "say", say)
    out, err = capsys.readouterr()
    assert out == ""  # no summary line: the error line says it all
    assert code == 2
    [line] = _error_lines(err)
    assert line.startswith("error: Disk full:") and str(runs) in line and "Fix:" in line
    assert _temp_files(small_fs) == []

    assert main(["runs", "--json", "--runs-dir", str(runs)]) == 0  # still answers on the full disk
    [run] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run["status"] == "failed" and run["error"] == line.removeprefix("error: ")

    filled[0].unlink()  # space is freed
    code = main(["train", str(shapes_dir), "--epochs", "1", "--image-size", "32", "--json", "--runs-dir", str(runs)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["status"] == "finished"
    assert (runs / out["run_id"] / "model.safetensors").exists() and _temp_files(small_fs) == []


def test_no_worker_is_started_on_a_full_disk(tmp_path, monkeypatch):
    """Queued runs wait for space instead of a worker that would crash on every page poll."""
    from tl_dashboard import worker
    from tl_dashboard.runs import RunStore

    store = RunStore(tmp_path / "runs")
    store.create_run({"model": "x"})
    monkeypatch.setattr(worker, "free_bytes", lambda path: 0)
    assert worker.start_worker(store) is None
    assert store.list_runs()[0]["status"] == "queued"


def test_dashboard_on_a_full_disk_reads_runs_and_names_the_problem(small_fs, monkeypatch):
    """A known workspace still lists its runs; a new visitor gets one line naming the folder, not a traceback."""
    from streamlit.testing.v1 import AppTest

    from tl_dashboard.runs import RunStore

    repo = Path(__file__).resolve().parent.parent
    runs = small_fs / "runs"
    monkeypatch.setenv("TL_RUNS_DIR", str(runs))
    monkeypatch.setenv("TL_DATASETS_DIR", str(small_fs / "datasets"))
    monkeypatch.setenv("TL_OFFLINE", "1")
    monkeypatch.chdir(repo)
    store = RunStore(runs)
    store.finish_run(store.create_run({"model": "resnet18"}, label="kept-run"), "finished")
    at = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    at.run()
    ws = at.query_params["ws"]
    _fill(small_fs)

    new = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    new.run()
    assert not new.exception, [e.value for e in new.exception]
    [err] = [str(e.value) for e in new.error]
    assert err.startswith("Disk full:") and str(runs) in err and "Fix:" in err

    known = AppTest.from_file(str(repo / "app.py"), default_timeout=60)
    known.query_params["ws"] = ws
    known.run()
    known.switch_page("pages/runs.py")
    known.run()
    assert not known.exception, [e.value for e in known.exception]
    assert "kept-run" in json.dumps([str(m.value) for m in known.markdown] + [str(s) for s in known.selectbox])
