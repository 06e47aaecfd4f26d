"""Does the live dashboard slow training down? A run watched in the browser vs the same run from the CLI.

The dashboard path: `streamlit run app.py` serves the app, headless Chromium opens the Train page,
and the run is started there by clicking **Start training** (the settings come in through the same
session defaults a user would change; this script sets them with environment-free defaults:
the sample set, efficientnet_lite0, first 4 blocks frozen, feature cache off so every epoch
really trains). The page polls the store every second while the run is live. The CLI path runs
`tl-dashboard train` with the same config in a terminal process. Both alternate `--repeats` times;
the script prints the median training throughput (images/s over the epochs) of each and the ratio.

    python benchmarks/bench_ui.py --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from serve import start_app  # benchmarks/serve.py (scripts run from this folder)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def throughput(store_dir: Path, run_id: str) -> float:
    from tl_dashboard.runs import RunStore

    rows = RunStore(store_dir).epochs(run_id)
    return statistics.median(r["images_per_sec"] for r in rows)


def cli_run(args, store_dir: Path) -> str:
    cmd = [
        sys.executable,
        "-m",
        "tl_dashboard.cli",
        "train",
        str(REPO / "sample_data" / "emoji3"),
        "--json",
        "--freeze",
        args.freeze,
        "--feature-cache",
        "off",
        "--epochs",
        str(args.epochs),
        "--image-size",
        str(args.image_size),
        "--runs-dir",
        str(store_dir),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["run_id"]


def ui_run(args, page, url: str, store_dir: Path) -> str:
    from tl_dashboard.runs import RunStore

    page.goto(url)  # a fresh session, then the sidebar, as a user would
    page.wait_for_timeout(3000)
    page.get_by_role("link", name="Model", exact=True).first.click()
    page.get_by_text("Freeze first N", exact=True).first.click()
    page.wait_for_timeout(3000)
    page.get_by_role("link", name="Train", exact=True).first.click()
    page.wait_for_timeout(3000)
    for label, value in (("Epochs", args.epochs), ("Image size (px)", args.image_size)):
        box = page.get_by_role("spinbutton", name=label, exact=True)
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(1500)
    page.get_by_text("off", exact=True).first.click()  # feature cache off
    page.wait_for_timeout(1500)
    before = {r["id"] for r in RunStore(store_dir).list_runs()}
    page.get_by_role("button", name="Start training").click()
    store = RunStore(store_dir)
    while True:
        new = [r for r in store.list_runs() if r["id"] not in before]
        if new and new[0]["status"] not in ("queued", "running"):
            run = new[0]
            assert run["status"] == "finished", run["error"]
            assert run["config"]["freeze"] == args.freeze, run["config"]["freeze"]
            return run["id"]
        page.wait_for_timeout(1000)  # the page keeps polling; we just wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--freeze", default="3", help="the Model page's 'Freeze first N' default N must match")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-ui-"))
    server, url = start_app({"TL_RUNS_DIR": str(tmp / "ui"), "TL_OFFLINE": "1"})
    try:
        ui, cli = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.set_default_timeout(120_000)
            for i in range(args.repeats):
                rid = ui_run(args, page, url, tmp / "ui")
                ui.append(throughput(tmp / "ui", rid))
                rid = cli_run(args, tmp / "cli")
                cli.append(throughput(tmp / "cli", rid))
                print(f"repeat {i + 1}: dashboard {ui[-1]:.1f} img/s, CLI {cli[-1]:.1f} img/s", flush=True)
            browser.close()
    finally:
        os.killpg(server.pid, 15)
    u, c = statistics.median(ui), statistics.median(cli)
    print(f"\nfreeze {args.freeze}, feature cache off, {args.epochs} epochs at {args.image_size} px, {args.repeats} repeats")
    print(f"dashboard (page open, polling): {u:.1f} img/s; CLI: {c:.1f} img/s; dashboard/CLI = {u / c:.3f}")


if __name__ == "__main__":
    main()
