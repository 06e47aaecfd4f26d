"""Serve the dashboard for a benchmark: `streamlit run app.py` on a free port, wait until healthy.

One home for what bench_ui.py and bench_classroom.py both need (the tests have their own fixture in
tests/files.py, which pytest owns).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env: dict[str, str], *, wait_s: float = 120) -> tuple[subprocess.Popen, str]:
    """Start the app with ``env`` added to this environment; return ``(process, url)`` once healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port)]
    cmd += ["--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the dashboard server did not become healthy")
