"""Real-browser tests for looking closer on Evaluate: a click on a confusion-matrix cell lists that
cell's images, and a photo from Chromium's fake camera goes through the run (top-k + Grad-CAM).

One server, one tiny run (efficientnet_lite0 head, 64 px, 1 epoch) trained before it starts.
"""

from __future__ import annotations

import os
import re
import socket

import pytest

from tests.test_browser import CHROMIUM, REPO, _idle, _no_exception, _shot, need_browser, streamlit_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def review_server(tmp_path_factory):
    need_browser()
    from tl_dashboard.engine import TrainConfig
    from tl_dashboard.runs import RunStore
    from tl_dashboard.worker import run_training

    tmp = tmp_path_factory.mktemp("browser_review")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TL_OFFLINE", "1")
        store = RunStore(tmp / "runs")
        cfg = TrainConfig(str(REPO / "sample_data" / "emoji3"), epochs=1, image_size=64, batch_size=32)
        run_id = store.create_run(cfg.to_dict(), label="tiny")
        store.mark_running(run_id, os.getpid(), socket.gethostname())
        assert run_training(store, run_id).status == "finished"
    with streamlit_server(tmp) as url:
        yield url


@pytest.fixture(scope="module")
def cam_page(review_server):
    """Chromium with a fake camera (a generated test pattern) and camera permission granted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
            ],
        )
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def test_click_on_a_confusion_cell_shows_its_images(review_server, cam_page):
    pg = cam_page
    pg.goto(review_server + "/evaluate")
    _idle(pg)
    pg.get_by_text("Click a cell to see its images.").first.wait_for()
    _no_exception(pg)
    pg.locator(".js-plotly-plot .scatterlayer .point").first.wait_for(state="attached")
    # the centre of the fullest cell, in page pixels, from plotly's own axes
    x, y, true, pred = pg.evaluate("""() => {
        const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => g.data && g.data[0].type === 'heatmap');
        const z = gd.calcdata[0][0].z, names = gd._fullData[0].x;
        let bi = 0, bj = 0;
        z.forEach((row, i) => row.forEach((v, j) => { if (v > z[bi][bj]) { bi = i; bj = j; } }));
        const L = gd._fullLayout, r = gd.getBoundingClientRect();
        return [r.left + L._size.l + L.xaxis.d2p(names[bj]), r.top + L._size.t + L.yaxis.d2p(names[bi]), names[bi], names[bj]];
    }""")
    header = pg.get_by_text("least sure first").first
    for _ in range(3):  # on a loaded machine the first click can land before plotly binds its handlers
        pg.mouse.move(x, y)
        pg.wait_for_timeout(300)
        pg.mouse.click(x, y)
        _idle(pg)
        try:
            header.wait_for(timeout=20_000)
            break
        except Exception:  # playwright's TimeoutError; try the click again
            continue
    header.wait_for()
    m = re.match(r"True (\w+), predicted (\w+): (\d+) images? \((correct|mistakes)\)", header.inner_text())
    assert m, header.inner_text()
    assert (m.group(1), m.group(2)) == (true, pred), header.inner_text()
    n = int(m.group(3))
    assert n >= 1 and (m.group(4) == "correct") == (true == pred)
    assert pg.locator('[data-testid="stImage"]').count() == min(n, 24)
    _shot(pg, "evaluate_cell")
    assert pg.get_by_text(f"p({pred})").count() >= min(n, 24)  # each image says its predicted probability
    _no_exception(pg)


def test_camera_photo_goes_through_the_run(review_server, cam_page):
    pg = cam_page
    pg.goto(review_server + "/evaluate")
    _idle(pg)
    pg.get_by_role("tab", name="Predict").click()
    _idle(pg)
    pg.get_by_text("Camera", exact=True).click()
    _idle(pg)
    take = pg.get_by_role("button", name="Take Photo")
    take.wait_for()
    pg.wait_for_function(
        "() => { const b = document.querySelector('[data-testid=\"stCameraInputButton\"]'); return b && !b.disabled; }", timeout=30_000
    )  # the fake stream is live
    take.click()
    _idle(pg)
    pg.get_by_text("Camera photo: top-").first.wait_for()
    pg.get_by_text("Grad-CAM for").first.wait_for()
    _no_exception(pg)
