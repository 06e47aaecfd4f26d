"""Real-browser tests: the app served by `streamlit run`, driven in Debian's Chromium via Playwright.

They walk Data -> Model -> Train, press Start training, watch a curve gain points, press Stop, find
the run on the Runs page, and save a screenshot of each page to docs/screenshots/ (the README shows
them). In CI (CI=true) a skip here is turned into a failure by conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("TL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(tmp: Path, **env_changes: str | None) -> Iterator[str]:
    """``streamlit run app.py`` on a free port with its store and datasets in ``tmp``; yields its URL
    once healthy. On exit the server and any training worker it started are killed. ``env_changes``:
    extra environment variables (``None`` removes one)."""
    env = {
        **os.environ,
        "TL_RUNS_DIR": str(tmp / "runs"),
        "TL_DATASETS_DIR": str(tmp / "datasets"),
        "TL_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    port = _free_port()
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, tmp / "server.log")
            yield url
        finally:
            from tl_dashboard.runs import RunStore

            for run in RunStore(tmp / "runs").list_runs("running"):  # workers live in their own session
                with contextlib.suppress(OSError, TypeError):
                    os.kill(int(run["pid"]), 9)
            os.killpg(proc.pid, 15)
            proc.wait(10)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("streamlit did not become healthy: " + log.read_text()[-2000:])


def need_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: run `make chromium` (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    tmp = tmp_path_factory.mktemp("browser")
    with streamlit_server(tmp) as url:
        yield {"url": url, "runs": tmp / "runs"}


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _idle(page) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_timeout(400)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=120_000,
    )
    page.wait_for_timeout(300)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _nav(page, server, label: str) -> None:
    page.get_by_role("link", name=label, exact=True).first.click()
    _idle(page)


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]').first.inner_text()


def _points(page, index: int) -> int:
    """Number of points in the first trace of the index-th plotly chart on the page."""
    return page.evaluate(
        "(i) => { const g = document.querySelectorAll('.js-plotly-plot')[i];"
        " if (!g || !g.data) return 0; return g.data.reduce((n, t) => n + ((t.x || []).length), 0); }",
        index,
    )


def test_walk_data_model_train_stop_runs(server, page):
    page.goto(server["url"])
    _idle(page)
    page.get_by_text("TL Dashboard").first.wait_for()
    _no_exception(page)
    _shot(page, "home")

    _nav(page, server, "Data")
    page.get_by_text("animals").first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _no_exception(page)
    _shot(page, "data")

    _nav(page, server, "Model")
    page.get_by_text("efficientnet_lite0").first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    # Full fine-tune: slow enough on a CPU that Stop lands mid-run.
    page.get_by_text("Full fine-tune", exact=True).first.click()
    _idle(page)
    _no_exception(page)
    _shot(page, "model")

    _nav(page, server, "Train")
    page.get_by_text("Full fine-tune").first.wait_for()  # the choice flowed from the Model page
    page.get_by_role("button", name="Start training").click()
    # The live loss curve gains points while the run is going.
    deadline = time.monotonic() + 240
    first = 0
    while time.monotonic() < deadline:
        first = _points(page, 0)
        if first > 0:
            break
        page.wait_for_timeout(1000)
    assert first > 0, "the loss curve never got a point"
    while time.monotonic() < deadline and _points(page, 0) <= first:
        page.wait_for_timeout(1000)
    assert _points(page, 0) > first, "the loss curve did not gain points"
    _no_exception(page)
    _shot(page, "train")
    page.get_by_test_id("stMain").get_by_role("button", name="Stop").click()
    page.get_by_text("stopped", exact=False).first.wait_for(timeout=120_000)
    _idle(page)
    _shot(page, "train-stopped")

    _nav(page, server, "Runs")
    page.get_by_text("stopped").first.wait_for()
    _no_exception(page)
    _shot(page, "runs")
    from tl_dashboard.runs import RunStore

    runs = RunStore(server["runs"]).list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "stopped"
    assert runs[0]["config"]["freeze"] == "none"


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _idle(page)


def test_sweep_compare_learn_and_evaluate(server, page):
    """Queue a freeze-depth sweep from the Train page, then compare it, learn from it, evaluate a run."""
    from tl_dashboard.runs import RunStore

    store = RunStore(server["runs"])
    before = {r["id"] for r in store.list_runs()}
    _nav(page, server, "Train")
    _set_number(page, "Epochs", 2)
    _set_number(page, "Image size (px)", 64)
    page.get_by_text("Freeze-depth sweep", exact=False).first.click()
    page.get_by_role("button", name="Queue the sweep").click()
    _idle(page)
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        new = [r for r in store.list_runs() if r["id"] not in before]
        if len(new) == 4 and all(r["status"] not in ("queued", "running") for r in new):
            break
        time.sleep(2)
    new = [r for r in store.list_runs() if r["id"] not in before]
    assert [r["status"] for r in new] == ["finished"] * 4, [(r["status"], r["error"]) for r in new]
    assert len({r["group_id"] for r in new}) == 1
    # queued in order from full fine-tune to head only, trained in that order
    by_start = sorted(new, key=lambda r: r["started"])
    assert [r["config"]["freeze"] for r in by_start] == ["none", "3", "6", "head"]

    _nav(page, server, "Compare")
    page.get_by_text("Sweeps", exact=False).first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _no_exception(page)
    _shot(page, "compare")

    _nav(page, server, "Learn")
    _no_exception(page)
    _shot(page, "learn")

    _nav(page, server, "Evaluate")
    page.get_by_text("Confusion", exact=False).first.wait_for()
    _no_exception(page)
    _shot(page, "evaluate")
