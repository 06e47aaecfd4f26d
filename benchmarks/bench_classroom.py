"""A class watching one run: does the run keep its speed with N people on the Train page?

One ``streamlit run app.py`` server, one training run (queued through the core in one workspace:
the sample set, efficientnet_lite0, first 3 blocks frozen, feature cache off so every epoch really
trains), and N sessions on that workspace's Train page while it trains. The sessions are **real
browser contexts**: one headless Chromium, one context (own cookies, own websocket, own Streamlit
session) per session, each on ``/train?ws=...``, so each polls the run as a person's tab does
(status every 2 s, curves every 4 s). The browser runs at ``nice 19``: in a class the browsers
are on the students' laptops, not on the server, so they must not take the CPU the server and the
run compete for; the frames the sessions sent are counted to show they kept polling anyway.

Each N is measured right after a solo phase (the same run with no session open) and reported as a
ratio to it, because others share this machine's CPU. Per phase, over a ``--window`` of seconds
after warm-up: the run's training images/s (training steps recorded in the window × batch size /
their time span), the
server's CPU share (its CPU seconds / wall seconds; 100% = one core) and its resident memory.

    python benchmarks/bench_classroom.py --sessions 1 10 30
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TICK = os.sysconf("SC_CLK_TCK")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children (seconds)."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICK


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        m = re.search(r"VmRSS:\s+(\d+) kB", fh.read())
    return int(m.group(1)) / 1024 if m else float("nan")


# -- the browser side (a child process at nice 19) ------------------------------------------------
def clients(n: int, url: str) -> None:
    """Open ``n`` contexts on ``url``; print READY when all show the run; count frames until stdin says STOP."""
    from playwright.sync_api import sync_playwright

    sent = [0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"])
        pages = []
        for _ in range(n):
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.set_default_timeout(600_000)
            page.on("websocket", lambda ws: ws.on("framesent", lambda _f: sent.__setitem__(0, sent[0] + 1)))
            page.goto(url)
            pages.append(page)
        for page in pages:
            page.get_by_text("Your current run").first.wait_for()
        start = sent[0]
        t0 = time.time()
        print("READY", flush=True)
        sys.stdin.readline()
        print(json.dumps({"frames_sent": sent[0] - start, "seconds": time.time() - t0}), flush=True)
        browser.close()


# -- the server side ------------------------------------------------------------------------------
def _queue_run(store, ws: str, args) -> str:
    from tl_dashboard import workspaces
    from tl_dashboard.engine import TrainConfig

    cfg = TrainConfig(data_dir=str(REPO / "sample_data" / "emoji3"), freeze="3", feature_cache="off",
                      epochs=10_000, image_size=args.image_size, batch_size=32)
    return workspaces.submit(store, cfg, ws, label="bench")


def _wait_steps(store, run_id: str, n: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while len(store.steps(run_id)) < n:
        run = store.get_run(run_id)
        if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} is {run['status']}: {run.get('error')}")
        time.sleep(0.5)


def phase(store, ws: str, server_pid: int, url: str, n: int, args) -> dict:
    """One run trained for a window with ``n`` sessions watching it (0 = solo)."""
    run_id = _queue_run(store, ws, args)
    _wait_steps(store, run_id, 3)  # the worker is up, the data decoded, training under way
    proc, frames = None, None
    if n:
        proc = subprocess.Popen(["nice", "-n", "19", sys.executable, __file__, "--client", str(n), "--url",
                                 f"{url}/train?ws={ws}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise SystemExit(f"browser clients failed: {line!r}")
    t0, c0 = time.time(), _cpu_seconds(server_pid)
    rss = [_rss_mb(server_pid)]
    while time.time() - t0 < args.window:
        time.sleep(2)
        rss.append(_rss_mb(server_pid))
    t1, c1 = time.time(), _cpu_seconds(server_pid)
    if proc:
        proc.stdin.write("STOP\n")
        proc.stdin.flush()
        frames = json.loads(proc.stdout.readline())
        proc.wait(120)
    store.request_stop(run_id)
    while store.get_run(run_id)["status"] in ("queued", "running"):
        time.sleep(0.5)
    steps = [r for r in store.steps(run_id) if t0 <= r["time"] <= t1]
    batch = store.get_run(run_id)["config"]["batch_size"]
    span = steps[-1]["time"] - steps[0]["time"] if len(steps) >= 2 else 0.0
    ips = batch * (len(steps) - 1) / span if span > 0 else float("nan")  # validation pauses count, in both phases
    return {"sessions": n, "images_per_sec": ips, "steps": len(steps), "server_cpu": (c1 - c0) / (t1 - t0),
            "server_rss_mb": max(rss), "frames_per_s": frames and frames["frames_sent"] / frames["seconds"]}


def _server(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "TL_RUNS_DIR": str(tmp / "runs"), "TL_DATASETS_DIR": str(tmp / "datasets"),
           "TL_OFFLINE": "1", "TL_MAX_RUNNING": "1"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                               "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 30], help="N values to measure")
    ap.add_argument("--window", type=float, default=45.0, help="seconds measured per phase")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return clients(args.client, args.url)
    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-classroom-"))
    os.environ.update(TL_RUNS_DIR=str(tmp / "runs"), TL_OFFLINE="1", TL_MAX_RUNNING="1")
    from tl_dashboard import workspaces
    from tl_dashboard.runs import RunStore

    store = RunStore(tmp / "runs")
    ws = workspaces.create_workspace(store, "bench")
    server, url = _server(tmp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on a kill too
    print(f"load before: {os.getloadavg()}", flush=True)
    results = []
    try:
        for n in args.sessions:
            solo = phase(store, ws, server.pid, url, 0, args)
            watched = phase(store, ws, server.pid, url, n, args)
            results.append((solo, watched))
            print(f"N={n:3d}: solo {solo['images_per_sec']:.1f} img/s ({solo['steps']} steps), watched "
                  f"{watched['images_per_sec']:.1f} img/s ({watched['steps']} steps), ratio "
                  f"{watched['images_per_sec'] / solo['images_per_sec']:.2f}; server CPU {solo['server_cpu']:.1%} -> "
                  f"{watched['server_cpu']:.1%} of a core, RSS {watched['server_rss_mb']:.0f} MB, "
                  f"{watched['frames_per_s']:.1f} frames/s from the sessions; load {os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        for run in store.list_runs(("queued", "running")):
            store.request_stop(run["id"])
        os.killpg(server.pid, 15)
    print("\n| sessions | run alone (img/s) | run watched (img/s) | kept | server CPU (1 core = 100%) | server RSS | "
          "frames/s from sessions |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for solo, w in results:
        print(f"| {w['sessions']} | {solo['images_per_sec']:.1f} | {w['images_per_sec']:.1f} | "
              f"{w['images_per_sec'] / solo['images_per_sec']:.0%} | {w['server_cpu']:.1%} (alone {solo['server_cpu']:.1%}) | "
              f"{w['server_rss_mb']:.0f} MB | {w['frames_per_s']:.1f} |")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
