"""A class on one server, in a real browser: a teacher and two students, each in their own browser context.

One ``streamlit run`` server (admin password set, one run at a time), three Playwright contexts on
Debian's Chromium. Each student picks a different data set and freeze plan and presses Start; both
runs queue and finish; each Train page shows its own run; a reload and a second tab restore every
choice; a student's Stop (Cancel) only touches their own run; the teacher, with the admin password
typed in the sidebar, stops either student's run. In CI (CI=true) a skip here is a failure.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, _idle, _no_exception, need_browser, streamlit_server

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
ADMIN = "teach-me-3141"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    need_browser()
    from tests.conftest import make_shapes_dataset

    tmp = tmp_path_factory.mktemp("classroom")
    shapes = make_shapes_dataset(tmp / "shapes", per_class=10, size=40)
    from playwright.sync_api import sync_playwright

    with (
        streamlit_server(tmp, TL_ADMIN_PASSWORD=ADMIN, TL_MAX_RUNNING="1", TL_ALLOWED_ROOTS=None, TL_MAX_QUEUED_PER_WORKSPACE=None) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield {"url": url, "runs": tmp / "runs", "shapes": shapes, "browser": browser, "log": tmp / "server.log"}
        browser.close()
    assert ADMIN not in (tmp / "server.log").read_text(errors="replace"), "the admin password reached the log"


def _open(browser, url: str):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    page.goto(url)
    _idle(page)
    page.get_by_text("TL Dashboard").first.wait_for()
    return ctx, page


def _nav(page, label: str) -> None:
    page.get_by_role("link", name=label, exact=True).first.click()
    _idle(page)


def _fill(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    _idle(page)


def _ws(page) -> str:
    m = re.search(r"[?&]ws=([A-Za-z0-9_-]+)", page.url)
    assert m, f"no workspace in the URL {page.url}"
    return m.group(1)


def _wait(cond, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def _choices(page) -> dict:
    """What the Train page shows of this workspace's choices (the card and the inputs)."""
    _nav(page, "Train")
    page.get_by_role("button", name="Start training").wait_for()
    card = page.get_by_test_id("stMain").inner_text()
    data = re.search(r"Data: (\S+)", card)
    return {
        "data": data.group(1) if data else None,
        "plan": "full fine-tune" if "full fine-tune" in card else "head only" if "head only" in card else None,
        "epochs": page.get_by_label("Epochs", exact=True).input_value(),
        "image size": page.get_by_label("Image size (px)", exact=True).input_value(),
        "label": page.get_by_label("Run label (optional)", exact=True).input_value(),
    }


def _start(page) -> None:
    page.get_by_role("button", name="Start training").click()
    _idle(page)
    _no_exception(page)


def test_teacher_and_two_students_share_one_server(classroom):
    from tl_dashboard.runs import RunStore

    store = RunStore(classroom["runs"])
    browser, url = classroom["browser"], classroom["url"]
    ctx_a, alice = _open(browser, url)
    ctx_b, bob = _open(browser, url)
    ws_a, ws_b = _ws(alice), _ws(bob)
    assert ws_a != ws_b  # a first visit makes a workspace of its own

    # Alice: the sample set, linear probe (head only). Bob: his folder of shapes, full fine-tune.
    _nav(bob, "Data")
    bob.get_by_text("Folder on this server", exact=True).first.click()
    _idle(bob)
    _fill(bob, "Folder on this server", classroom["shapes"])
    bob.get_by_text("circles").first.wait_for()
    _nav(bob, "Model")
    bob.get_by_text("Full fine-tune", exact=True).first.click()
    _idle(bob)
    for page, label in ((alice, "alice"), (bob, "bob")):
        _nav(page, "Train")
        _fill(page, "Epochs", 1)
        _fill(page, "Image size (px)", 64)
        _fill(page, "Run label (optional)", label)
    want_a = {"data": "emoji3", "plan": "head only", "epochs": "1", "image size": "64", "label": "alice"}
    want_b = {"data": "shapes", "plan": "full fine-tune", "epochs": "1", "image size": "64", "label": "bob"}

    # A reload and a second tab restore every choice.
    alice.reload()
    _idle(alice)
    assert _ws(alice) == ws_a
    assert _choices(alice) == want_a
    bob2 = ctx_b.new_page()
    bob2.set_default_timeout(90_000)
    bob2.goto(bob.url)
    _idle(bob2)
    assert _choices(bob2) == want_b
    bob2.close()

    # Both press Start: both runs queue (one trains at a time here) and both finish.
    _start(alice)
    _start(bob)
    bob.get_by_text("in line", exact=False).first.wait_for(timeout=60_000)  # Bob sees his place in the queue
    runs = _wait(
        lambda: (
            [r for r in store.list_runs() if r["label"] in ("alice", "bob") and r["status"] not in ("queued", "running")]
            if len(store.list_runs()) >= 2
            else None
        ),
        "both runs to end",
        600,
    )
    _wait(lambda: len([r for r in store.list_runs() if r["status"] == "finished"]) == 2, "both runs to finish", 600)
    by_label = {r["label"]: r for r in store.list_runs()}
    assert by_label["alice"]["workspace"] == ws_a and by_label["bob"]["workspace"] == ws_b
    assert by_label["alice"]["config"]["freeze"] == "head" and by_label["bob"]["config"]["freeze"] == "none"
    assert by_label["alice"]["dataset"]["name"] == "emoji3" and by_label["bob"]["dataset"]["name"] == "shapes"
    assert by_label["bob"]["dataset"]["fingerprint"] and by_label["bob"]["dataset"]["images"] == 20
    del runs

    # Each Train page shows its own run, never the other's.
    for page, mine, theirs in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        page.reload()
        _idle(page)
        _nav(page, "Train")
        main = page.get_by_test_id("stMain")
        main.get_by_text("finished", exact=False).first.wait_for()
        text = main.inner_text()
        assert f"Your last run · {mine}" in text and theirs not in text, text[:2000]
        _no_exception(page)

    # A student's Stop never touches the other's run: Bob's long run trains, Alice's waits behind it;
    # Alice cancels hers and Bob's keeps going.
    _fill(bob, "Epochs", 300)
    _fill(bob, "Run label (optional)", "bob-long")
    _start(bob)
    bob_long = _wait(
        lambda: next((r for r in store.list_runs("running") if r["label"] == "bob-long"), None), "Bob's long run to train", 300
    )
    _fill(alice, "Epochs", 300)
    _fill(alice, "Run label (optional)", "alice-long")
    _start(alice)
    alice_long = next(r for r in store.list_runs("queued") if r["label"] == "alice-long")
    alice.get_by_text("in line", exact=False).first.wait_for()
    alice.locator(".st-key-stop_training button").click()
    _idle(alice)
    assert store.get_run(alice_long["id"])["status"] == "cancelled"
    bob_now = store.get_run(bob_long["id"])
    assert bob_now["status"] == "running" and not bob_now["stop_requested"]

    # The teacher types the admin password in the sidebar and stops either student's run.
    _fill(alice, "Epochs", 300)
    _fill(alice, "Run label (optional)", "alice-again")
    _start(alice)
    alice_again = next(r for r in store.list_runs("queued") if r["label"] == "alice-again")
    ctx_t, teacher = _open(browser, url)
    _nav(teacher, "Train")
    assert teacher.locator(f".st-key-teacher_stop_{bob_long['id']}").count() == 0  # locked without the password
    _fill(teacher, "Teacher password", ADMIN)
    teacher.get_by_text("Teacher mode", exact=False).first.wait_for()
    assert ADMIN not in teacher.url
    teacher.locator(f".st-key-teacher_stop_{alice_again['id']} button").click()
    _idle(teacher)
    teacher.locator(f".st-key-teacher_stop_{bob_long['id']} button").click()
    _idle(teacher)
    _no_exception(teacher)
    assert store.get_run(alice_again["id"])["status"] == "cancelled"
    _wait(lambda: store.get_run(bob_long["id"])["status"] == "stopped", "the teacher's stop to land", 180)
    for ctx in (ctx_a, ctx_b, ctx_t):
        ctx.close()


def test_a_bookmarked_page_is_the_first_request_of_a_fresh_server(classroom, tmp_path):
    """A student bookmarked /train?ws=... and the server restarted: that first request (Streamlit's old
    pages-folder mode, routed through app.py) lands in their workspace, with their run, and makes none."""
    import socket
    import subprocess

    from tl_dashboard import workspaces
    from tl_dashboard.runs import RunStore

    store = RunStore(tmp_path / "runs")
    ws = workspaces.create_workspace(store, "bookmarked")
    run_id = store.create_run({"model": "efficientnet_lite0", "epochs": 4, "batch_size": 8}, label="my bookmarked run", workspace=ws)
    trainer = subprocess.Popen(["sleep", "600"])  # a live process standing in for the worker (the server's cleanup kills it)
    store.claim_next(trainer.pid, socket.gethostname())
    store.add_epoch(run_id, {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "train_acc": 0.6, "val_acc": 0.7})
    with streamlit_server(tmp_path) as url:  # its own, fresh server; the class's browser (one Playwright per process)
        ctx = classroom["browser"].new_context(viewport={"width": 1400, "height": 1000})
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{url}/train?ws={ws}")  # the very first request this server gets
        page.get_by_text("Your current run").first.wait_for()
        _idle(page)
        assert page.get_by_text("my bookmarked run").count() >= 1
        assert f"ws={ws}" in page.url
        ctx.close()
    assert [r["id"] for r in store._query("SELECT id FROM workspaces")] == [ws]  # no stray workspace was made
    store.request_stop(run_id)
    trainer.kill()
    trainer.wait()
