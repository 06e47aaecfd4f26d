"""The on-disk caches: keyed by content and settings, never stale, never half-written, bounded."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_dashboard import cache, parallel, storage
from tl_dashboard.data import load_rgb, resize_center_square, scan_images
from tl_dashboard.featstore import open_features, weights_digest
from tl_dashboard.imagestore import open_images
from tl_dashboard.storage import DiskFull

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TL_CACHE_DIR", str(d))
    return d


def _folder(root: Path, n: int = 4, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _feature_compute(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(dim=(2, 3))


def test_cache_root_defaults_outside_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("TL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "tl-dashboard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "tl-dashboard"
    assert REPO not in cache.cache_root().parents


def test_tests_never_use_the_users_cache():
    assert os.environ.get("TL_TEST_CACHE_DIR") and Path(os.environ["TL_TEST_CACHE_DIR"]).name.startswith("tl-cache-tests-")


def test_scan_verifies_each_file_content_once(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    checked = []
    real = parallel.verify_files
    monkeypatch.setattr(parallel, "verify_files", lambda paths, *a, **k: checked.extend(paths) or real(paths, *a, **k))
    first = scan_images(root)
    assert len(checked) == 8 and len(first.digests) == 8
    checked.clear()
    again = scan_images(root)
    assert checked == [] and again == first and again.digests == first.digests
    time.sleep(0.01)
    Image.new("RGB", (40, 30), "red").save(root / "a" / "0.png")  # edited: read and checked again
    assert [Path(p).name for p in (checked.clear() or scan_images(root) and checked)] == ["0.png"]


def test_image_store_rows_match_the_in_memory_preparation_and_are_reused(tmp_path):
    root = _folder(tmp_path / "d")
    split = scan_images(root)
    store, digests = open_images(split, 24, "bilinear")
    assert not store.hit and len(store) == 8
    rows = store.rows(split.train, digests)
    x = store.read(rows)
    for s, img in zip(split.train, x):
        assert torch.equal(img, resize_center_square(load_rgb(s.path, draft_size=24), 24, "bilinear"))
    assert torch.equal(torch.cat(list(store.batches(rows, 3))), x)
    again, _ = open_images(scan_images(root, seed=5), 24, "bilinear")  # another split of the same files
    assert again.hit and again.path == store.path


def test_modified_image_and_changed_size_miss_the_image_cache(tmp_path):
    root = _folder(tmp_path / "d")
    store, _ = open_images(scan_images(root), 24, "bicubic")
    assert not open_images(scan_images(root), 32, "bicubic")[0].hit  # another load size
    assert not open_images(scan_images(root), 24, "bilinear")[0].hit  # another interpolation
    time.sleep(0.01)
    Image.new("RGB", (40, 30), "red").save(root / "a" / "0.png")
    split = scan_images(root)
    edited, digests = open_images(split, 24, "bicubic")
    assert not edited.hit and edited.path != store.path
    row = edited.read(edited.rows([s for s in split.train + split.val if s.path.name == "0.png" and s.label == 0], digests))
    assert row[0, 0].float().mean() > 200  # the red image, not the cached noise


def test_different_weights_image_size_or_file_miss_the_feature_cache(tmp_path):
    root = _folder(tmp_path / "d")
    store, _ = open_images(scan_images(root), 24)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    parts = {"model": "m", "weights": weights_digest(a), "depth": 2, "image_size": 24}
    first = open_features(store, parts, _feature_compute)
    assert not first.hit and open_features(store, parts, _feature_compute).hit
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert weights_digest(b) == weights_digest(a)
    b.bias.data[0] += 1e-6
    assert not open_features(store, {**parts, "weights": weights_digest(b)}, _feature_compute).hit
    assert not open_features(store, {**parts, "image_size": 32}, _feature_compute).hit
    assert not open_features(store, {**parts, "depth": 3}, _feature_compute).hit
    Image.new("RGB", (40, 30), "red").save(root / "b" / "1.png")
    other, _ = open_images(scan_images(root), 24)
    assert not open_features(other, parts, _feature_compute).hit
    assert torch.equal(first.read([0, 1]), _feature_compute(store.read([0, 1])))


_BUILDER = textwrap.dedent("""
    import sys, time, torch
    from tl_dashboard.data import scan_images
    from tl_dashboard.featstore import open_features
    from tl_dashboard.imagestore import open_images
    store, _ = open_images(scan_images(sys.argv[1]), 24)
    delay = float(sys.argv[2])
    def compute(x):
        time.sleep(delay)
        return x.float().mean(dim=(2, 3))
    fs = open_features(store, {"model": "m"}, compute, batch=2)
    print("HIT" if fs.hit else "BUILT", fs.path, flush=True)
""")


def _builder(root: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _BUILDER, str(root), str(delay)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _entry_ok(path: Path, store) -> None:
    meta = json.loads((path / "entry.json").read_text())
    arr = np.fromfile(path / "features.bin", dtype=meta["dtype"]).reshape(meta["rows"], *meta["shape"])
    assert torch.equal(torch.from_numpy(arr), _feature_compute(store.read(list(range(len(store))))))


def test_two_processes_building_the_same_entry_leave_it_intact(tmp_path):
    root = _folder(tmp_path / "d")
    store, _ = open_images(scan_images(root), 24)
    procs = [_builder(root, 0.2) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {o[0].split()[1] for o in outs}
    assert len(paths) == 1 and sorted(o[0].split()[0] for o in outs) in (["BUILT", "HIT"], ["BUILT", "BUILT"])
    _entry_ok(Path(paths.pop()), store)
    assert not list((cache.cache_root() / "features").glob(".tmp-*"))


def test_killed_builder_leaves_no_entry_a_later_run_would_use(tmp_path):
    root = _folder(tmp_path / "d")
    store, _ = open_images(scan_images(root), 24)
    p = _builder(root, 5.0)
    parent = cache.cache_root() / "features"
    deadline = time.time() + 60
    while not list(parent.glob(".tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(parent.glob(".tmp-*")), "the builder never started"
    p.kill()
    p.communicate()
    assert [d for d in parent.iterdir() if not d.name.startswith(".")] == []
    fs = open_features(store, {"model": "m"}, _feature_compute, batch=2)
    assert not fs.hit
    _entry_ok(fs.path, store)
    cache.list_entries()  # sweeps the dead builder's folder
    assert not list(parent.glob(".tmp-*"))


def test_disk_full_while_decoding_leaves_no_half_entry(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    split = scan_images(root)
    real, calls = os.pwrite, []

    def full(fd, data, offset):
        calls.append(offset)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(parallel.os, "pwrite", full)
    with pytest.raises(DiskFull, match="Disk full"):
        open_images(split, 24)
    parent = cache.cache_root() / "images"
    assert list(parent.iterdir()) == [] or all(d.name.startswith(".") and d.suffix == ".lock" for d in parent.iterdir())
    monkeypatch.setattr(parallel.os, "pwrite", real)
    store, _ = open_images(split, 24)
    assert not store.hit and len(store) == 8


def test_not_enough_space_is_refused_before_writing(tmp_path, monkeypatch):
    split = scan_images(_folder(tmp_path / "d"))
    monkeypatch.setattr(storage, "free_bytes", lambda p: 1000)
    with pytest.raises(DiskFull, match="TL_CACHE_DIR"):
        open_images(split, 24)
    assert cache.list_entries() == []


def test_lru_eviction_list_and_clear(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    split = scan_images(root)
    old, _ = open_images(split, 16)
    os.utime(old.path / "entry.json", (1, 1))  # used long ago
    mid, _ = open_images(split, 20)
    item = 3 * 24 * 24 * 8
    monkeypatch.setenv("TL_CACHE_MAX_GB", str((old.nbytes + mid.nbytes + item + 2000) / 2**30))
    new, _ = open_images(split, 24)
    kept = {e["load_size"] for e in cache.list_entries()}
    assert kept == {20, 24}  # the least recently used went
    info = cache.usage()
    assert info["entries"] == 2 and info["bytes"] >= mid.nbytes + new.nbytes
    assert cache.clear() >= mid.nbytes + new.nbytes and cache.list_entries() == []


def test_cli_cache_list_and_clear(tmp_path, capsys):
    from tl_dashboard.cli import main

    open_images(scan_images(_folder(tmp_path / "d")), 16)
    assert main(["cache", "--list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["entries"][0]["kind"] == "images" and out["bytes"] > 0 and out["path"] == str(cache.cache_root())
    assert main(["cache", "--clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["freed_bytes"] > 0
    assert cache.list_entries() == []


def test_second_run_reuses_images_and_features_and_head_features_shares_them(shapes_dir, monkeypatch):
    from tl_dashboard.engine import TrainConfig, train
    from tl_dashboard.features import head_features

    cfg = TrainConfig(data_dir=str(shapes_dir), freeze="head", epochs=2, batch_size=8, image_size=32)
    first = train(cfg)
    assert first.feature_cache["used"] and first.feature_cache["persistent"] == "computed and stored"
    entries = {(e["kind"], e["key"]) for e in cache.list_entries()}
    assert {k for k, _ in entries} == {"images", "features"}

    def no_decoding(*a, **k):
        raise AssertionError("a cached run decoded images again")

    monkeypatch.setattr(parallel, "decode_rows", no_decoding)
    monkeypatch.setattr(parallel, "verify_files", no_decoding)
    second = train(cfg)
    assert second.feature_cache["persistent"] == "reused"
    assert [h["train_loss"] for h in second.history] == [h["train_loss"] for h in first.history]
    assert second.val_accuracy == first.val_accuracy
    fs = head_features(cfg)
    assert len(fs.train) + len(fs.val) == 16
    assert {(e["kind"], e["key"]) for e in cache.list_entries()} == entries  # the probe reused the run's entry
    full = train(TrainConfig(**{**cfg.to_dict(), "freeze": "4", "epochs": 1}))  # another depth: its own entry
    assert full.feature_cache["persistent"] == "computed and stored"


def test_row_view_reads_planned_batches_ahead_and_any_other_index_directly(tmp_path):
    from tl_dashboard.imagestore import RowView

    root = _folder(tmp_path / "d")
    split = scan_images(root)
    store, digests = open_images(split, 16)
    view = RowView(store.read, store.rows(split.train + split.val, digests))
    order = torch.randperm(len(view), generator=torch.Generator().manual_seed(0))
    batches = [order[i : i + 3] for i in range(0, len(order), 3)]
    view.plan(batches)
    assert torch.equal(view[batches[0]], store.read(view.rows[batches[0]]))
    odd = torch.tensor([5, 1])
    assert torch.equal(view[odd], store.read(view.rows[odd]))  # off plan: read directly, plan dropped
    assert torch.equal(view[1:3], store.read(view.rows[1:3])) and torch.equal(view[2], store.read([int(view.rows[2])])[0])
