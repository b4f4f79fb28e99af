"""`python -m services.gateway` as a real process: HTTPS with cheroot, HTTP redirecting, stops on signals."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.mtls import default_pki

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://console.example.com"


def _start_gateway(tls_dir: Path) -> tuple[subprocess.Popen, dict]:
    env = {
        **os.environ,
        "GATEWAY_BIND": "127.0.0.1:0",
        "GATEWAY_HTTP_BIND": "127.0.0.1:0",
        "GATEWAY_TLS_DIR": str(tls_dir),
        "GATEWAY_PUBLIC_URL": PUBLIC_URL,
        "AUTH_ADDR": "127.0.0.1:9",
        "LISTS_ADDR": "127.0.0.1:9",
        "CAMPAIGNS_ADDR": "127.0.0.1:9",
        "MAILBLAST_INTERNAL_KEY": "k" * 32,
        **default_pki().env("gateway"),
        "PYTHONUNBUFFERED": "1",
    }
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
            return proc, event
    proc.kill()
    proc.wait(5)
    proc.stderr.close()
    raise AssertionError("the gateway did not report ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_gateway_serves_https_redirects_http_and_stops_cleanly(sig: signal.Signals, tmp_path: Path) -> None:
    # Without a configured certificate the gateway makes a self-signed one and serves HTTPS with HSTS;
    # its plain-HTTP port answers every page with a redirect to its public HTTPS address (GATEWAY_PUBLIC_URL,
    # whatever Host the client sent); on SIGTERM (Kubernetes) or SIGINT (Ctrl-C) it stops by itself with
    # exit code 0.
    proc, ready = _start_gateway(tmp_path / "tls")
    try:
        assert ready["url"].startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem"))
        with urllib.request.urlopen(f"{ready['url']}healthz", timeout=10, context=trust) as response:  # noqa: S310
            assert response.status == 200
            assert json.loads(response.read()) == {"status": "ok"}
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            assert response.headers["Server"] == "mailblast"
        host, port = ready["http_bind"].rsplit(":", 1)
        plain = http.client.HTTPConnection(host, int(port), timeout=10)
        plain.request("GET", "/login?next=/lists")
        redirect = plain.getresponse()
        assert redirect.status == 308
        assert redirect.headers["Location"] == f"{PUBLIC_URL}/login?next=/lists"
        redirect.read()
        # The Host header is the client's to write; the Location is the console's own address all the same.
        plain.request("GET", "/lists", headers={"Host": "evil.example"})
        forged = plain.getresponse()
        assert forged.status == 308 and forged.headers["Location"] == f"{PUBLIC_URL}/lists"
        plain.close()
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
