"""Shared fixtures: tiny image folders made with PIL, and the rule that browser tests run in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "emoji3"


def _require_browser() -> bool:
    return os.environ.get("TL_REQUIRE_BROWSER") == "1" or os.environ.get("CI", "").lower() == "true"


def make_shapes_dataset(root: Path, per_class: int = 8, size: int = 40, classes=("circles", "squares")) -> Path:
    """Two (or three) visually distinct classes: red discs, blue squares, green bars, on noisy grey."""
    import random

    rng = random.Random(0)
    colours = {"circles": (220, 40, 40), "squares": (40, 60, 220), "bars": (40, 180, 60)}
    for cls in classes:
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = tuple(rng.randint(90, 160) for _ in range(3))
            img = Image.new("RGB", (size, size), bg)
            dr = ImageDraw.Draw(img)
            s = rng.randint(size // 3, size // 2)
            x, y = rng.randint(0, size - s), rng.randint(0, size - s)
            if cls == "circles":
                dr.ellipse([x, y, x + s, y + s], fill=colours[cls])
            elif cls == "squares":
                dr.rectangle([x, y, x + s, y + s], fill=colours[cls])
            else:
                dr.rectangle([x, 0, x + s // 3, size], fill=colours[cls])
            img.save(d / f"{cls}_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def shapes3_dir(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes3"), classes=("circles", "squares", "bars"))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    monkeypatch.setenv("TL_RUNS_DIR", str(d))
    monkeypatch.setenv("TL_DATASETS_DIR", str(tmp_path / "datasets"))
    return d


def pytest_collection_modifyitems(config, items):
    """In CI the real-browser tests are part of the contract: there must be some."""
    if _require_browser() and not any(i.get_closest_marker("browser") for i in items) and not config.getoption("-m"):
        raise pytest.UsageError("CI requires the real-browser tests (marker 'browser'), but none were collected.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped browser test is a failure: they must not be skipped there."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and item.get_closest_marker("browser") and _require_browser():
        rep.outcome = "failed"
        rep.longrepr = f"real-browser test was skipped in CI ({rep.longrepr}); install chromium (make chromium)"


def pytest_configure(config):
    """No test writes to the user's cache folder: the whole session caches under one tmp dir
    (subprocesses inherit it; tests that check the cache itself point TL_CACHE_DIR at their own tmp_path)."""
    import shutil
    import tempfile

    if not os.environ.get("TL_TEST_CACHE_DIR"):
        d = tempfile.mkdtemp(prefix="tl-cache-tests-")
        os.environ["TL_TEST_CACHE_DIR"] = os.environ["TL_CACHE_DIR"] = d
        config.add_cleanup(lambda: shutil.rmtree(d, ignore_errors=True))
    _one_torch_thread()


def _one_torch_thread():
    """One torch thread in the test process: the runs here are tiny, and on a shared 2-core machine two
    spinning OpenMP threads next to a training worker or a browser made them 15-20x slower."""
    import torch

    torch.set_num_threads(1)
