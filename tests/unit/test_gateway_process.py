"""`python -m services.gateway` as a real process: serves over HTTP with waitress, stops on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start_gateway() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "GATEWAY_BIND": "127.0.0.1:0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "service ready":
            return proc, f"http://{event['bind']}"
    proc.kill()
    proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()
    raise AssertionError("the gateway did not report ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_gateway_serves_and_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    # The gateway process answers /healthz over real HTTP with security headers, and on SIGTERM
    # (Kubernetes) or SIGINT (Ctrl-C) it stops by itself with exit code 0.
    proc, base = _start_gateway()
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:  # noqa: S310 - http on loopback
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Server"] == "mailblast"
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        assert "service stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
