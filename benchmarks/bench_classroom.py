"""A class watching one run: does the run keep its speed with N people on the Train page?

One ``streamlit run app.py`` server, one training run (queued through the core in one workspace:
the sample set, efficientnet_lite0, first 3 blocks frozen, feature cache off so every epoch really
trains), and N sessions on that workspace's Train page while it trains.

The sessions are **websocket clients** by default (``--clients websocket``): each opens its own
Streamlit session over ``/_stcore/stream`` and speaks the frontend's protocol: it opens the Train
page of ``?ws=...`` and then reruns each ``st.fragment(run_every=...)`` at the interval the server
asks for (status every 2 s, curves every 4 s), as a person's tab does; the server does all the work
it does for a browser (script runs, charts serialised, store reads), and the reruns it served are
counted. They cost this machine almost no CPU, which stands for the class's browsers being on the
students' laptops. ``--clients browser`` uses real headless Chromium contexts instead (at
``nice 19``); on a shared, loaded 2-core machine they could not even load the page in time.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve import start_app  # benchmarks/serve.py (scripts run from this folder)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TICK = os.sysconf("SC_CLK_TCK")


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
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
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


# -- websocket clients (no browser: only the server's work) -----------------------------------------
async def _ws_session(url: str, query: str, stats: dict, stop) -> None:
    """One Streamlit session over its websocket, doing what the frontend does on the Train page: open it,
    then rerun each ``st.fragment(run_every=...)`` at its interval (the server asks with AutoRerun)."""
    import asyncio

    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.asyncio.client import connect

    conn = await connect(
        url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"], max_size=None, open_timeout=300, ping_timeout=None
    )
    page_hash = ""

    async def send(fragment_id: str = "") -> None:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string, cs.page_name = query, "train"
        if page_hash:
            cs.page_script_hash = page_hash
        if fragment_id:
            cs.fragment_id, cs.is_auto_rerun = fragment_id, True
        await conn.send(msg.SerializeToString())

    timers: dict[str, asyncio.Task] = {}
    intervals: dict[str, float] = {}

    async def tick(fid: str, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await send(fid)
            stats["sent"] += 1

    await send()
    while not stop.is_set():
        try:
            raw = await asyncio.wait_for(conn.recv(), 1.0)
        except asyncio.TimeoutError:
            continue
        fwd = ForwardMsg.FromString(raw)
        kind = fwd.WhichOneof("type")
        stats["bytes"] += len(raw)
        if kind == "navigation":  # the router's pages: open Train by its hash, as a click in the menu does
            for pg in fwd.navigation.app_pages:
                if pg.page_name == "Train" and page_hash != pg.page_script_hash:
                    page_hash = pg.page_script_hash
                    await send()
        elif kind == "auto_rerun" and intervals.get(fwd.auto_rerun.fragment_id) != fwd.auto_rerun.interval:
            fid, every = fwd.auto_rerun.fragment_id, fwd.auto_rerun.interval  # new, or a new pace: restart it, as the frontend does
            if fid in timers:
                timers[fid].cancel()
            timers[fid], intervals[fid] = asyncio.create_task(tick(fid, every)), every
            stats["paces"][id(conn), fid] = every
        elif kind == "stop_auto_rerun":
            for fid in fwd.stop_auto_rerun.fragment_ids:
                if fid in timers:
                    timers.pop(fid).cancel()
                    intervals.pop(fid, None)
        elif kind == "new_session" and not fwd.metadata.run.fragment_ids:
            stats["full"] += 1  # a whole-page run (not one of the fragments)
        elif kind == "script_finished":
            stats["finished"] += 1
            if timers:  # on the Train page, polling the run
                stats["ready"].add(id(conn))
    for t in timers.values():
        t.cancel()
    await conn.close()


def ws_clients(n: int, url: str, query: str) -> None:
    """``n`` websocket sessions; READY when each finished its first script run; counts until stdin says STOP."""
    import asyncio
    import threading

    stats = {"sent": 0, "finished": 0, "full": 0, "bytes": 0, "ready": set(), "paces": {}}

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_ws_session(url, query, stats, stop)) for _ in range(n)]
        deadline = time.monotonic() + 600
        while len(stats["ready"]) < n:  # a session that failed (or never got there) ends the benchmark, never hangs it
            failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed or time.monotonic() > deadline:
                print(f"FAILED: {len(stats['ready'])} of {n} sessions ready; {failed[:1]!r}", flush=True)
                os._exit(1)
            await asyncio.sleep(0.5)
        base = dict(sent=stats["sent"], finished=stats["finished"], full=stats["full"], bytes=stats["bytes"])
        t0 = time.time()
        print("READY", flush=True)
        line = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), line.set()), daemon=True).start()
        while not line.is_set():
            await asyncio.sleep(0.5)
        dt = time.time() - t0
        print(
            json.dumps(
                {
                    "frames_sent": stats["sent"] - base["sent"],
                    "seconds": dt,
                    "reruns": stats["finished"] - base["finished"],
                    "full_runs": stats["full"] - base["full"],
                    "paces": sorted(set(stats["paces"].values())),  # the polling intervals in force at the end (s)
                    "bytes": stats["bytes"] - base["bytes"],
                }
            ),
            flush=True,
        )
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# -- the server side ------------------------------------------------------------------------------
def _queue_run(store, ws: str, args) -> str:
    from tl_dashboard import workspaces
    from tl_dashboard.engine import TrainConfig

    cfg = TrainConfig(
        data_dir=str(REPO / "sample_data" / "emoji3"),
        freeze="3",
        feature_cache="off",
        epochs=10_000,
        image_size=args.image_size,
        batch_size=args.batch_size,
    )
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
        mode = ["nice", "-n", "19", sys.executable, __file__, "--client", str(n), "--url", f"{url}/train?ws={ws}"]
        if args.clients == "websocket":
            mode = [sys.executable, __file__, "--ws-client", str(n), "--url", url, "--query", f"ws={ws}"]
        proc = subprocess.Popen(mode, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
    return {
        "sessions": n,
        "images_per_sec": ips,
        "steps": len(steps),
        "server_cpu": (c1 - c0) / (t1 - t0),
        "server_rss_mb": max(rss),
        "frames_per_s": frames and frames["frames_sent"] / frames["seconds"],
        "reruns_per_s": frames and frames.get("reruns", 0) / frames["seconds"],
        "full_runs": frames and frames.get("full_runs", 0),
        "paces": frames and frames.get("paces"),
    }


def _server(tmp: Path) -> tuple[subprocess.Popen, str]:
    env = {"TL_RUNS_DIR": str(tmp / "runs"), "TL_DATASETS_DIR": str(tmp / "datasets"), "TL_OFFLINE": "1", "TL_MAX_RUNNING": "1"}
    return start_app(env, wait_s=120)


def _cleanup(store, server: subprocess.Popen) -> None:
    """Stop every run, end the training process (it outlives the server on purpose) and the server."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not leave a run training
    for run in store.list_runs(("queued", "running")):
        store.request_stop(run["id"])
    deadline = time.monotonic() + 60
    while store.list_runs("running") and time.monotonic() < deadline:
        time.sleep(0.5)
    for run in store.list_runs("running"):  # it did not stop in time: end its process
        if run.get("pid"):
            try:
                os.kill(run["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.killpg(server.pid, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 30], help="N values to measure")
    ap.add_argument("--window", type=float, default=45.0, help="seconds measured per phase")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--clients",
        choices=["websocket", "browser"],
        default="websocket",
        help="websocket: Python clients speaking Streamlit's protocol as the frontend does (no browser "
        "CPU on this machine); browser: headless Chromium contexts at nice 19",
    )
    ap.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ws-client", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--query", default="", help=argparse.SUPPRESS)
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        return clients(args.client, args.url)
    if args.ws_client is not None:
        return ws_clients(args.ws_client, args.url, args.query)
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
            print(
                f"N={n:3d}: solo {solo['images_per_sec']:.1f} img/s ({solo['steps']} steps), watched "
                f"{watched['images_per_sec']:.1f} img/s ({watched['steps']} steps), ratio "
                f"{watched['images_per_sec'] / solo['images_per_sec']:.2f}; server CPU {solo['server_cpu']:.1%} -> "
                f"{watched['server_cpu']:.1%} of a core, RSS {watched['server_rss_mb']:.0f} MB, "
                f"{watched['frames_per_s']:.1f} frames/s from the sessions, {watched['full_runs']} whole-page runs, live views polled every {watched['paces']} s; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        _cleanup(store, server)
    print(
        "\n| sessions | run alone (img/s) | run watched (img/s) | kept | server CPU (1 core = 100%) | server RSS | frames/s from sessions |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for solo, w in results:
        print(
            f"| {w['sessions']} | {solo['images_per_sec']:.1f} | {w['images_per_sec']:.1f} | "
            f"{w['images_per_sec'] / solo['images_per_sec']:.0%} | {w['server_cpu']:.1%} (alone {solo['server_cpu']:.1%}) | "
            f"{w['server_rss_mb']:.0f} MB | {w['frames_per_s']:.1f} |"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
