"""Atomic writes and the named disk-full error, on a real small file system (tmpfs) where we may mount one."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tl_dashboard.errors import UserError
from tl_dashboard.storage import (DiskFull, atomic_open, atomic_write_bytes, atomic_write_json,
                                  check_free_space, is_disk_full, remove_temp_files)


def mount_small_fs(path: Path, size_mb: int) -> str | None:
    """Mount a size-limited tmpfs at ``path``; return None, or why it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a size-limited tmpfs (CI runs the tests as root)"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -t tmpfs failed here: {proc.stderr.strip() or proc.returncode}"
    return None


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MB tmpfs (skips, saying why, where mounting is not allowed); unmounted in a finally."""
    mnt = tmp_path / "small"
    why = mount_small_fs(mnt, 16)
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
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "y.bin") as fh:
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
