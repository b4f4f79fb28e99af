"""Serving the console: HTTPS with cheroot's TLS adapter, and a plain-HTTP listener that only redirects."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from services.gateway.security import HSTS

SERVER_NAME = "mailblast"


def redirect_app(public_url: str) -> Callable:
    """A WSGI app sending every request to the same path under the console's public HTTPS address (308 keeps
    the method and body). The address is configured, never taken from the Host header a client chose."""
    base = public_url.rstrip("/")

    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            # Probes may ask over plain HTTP; the answer says nothing about anyone.
            start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [b'{"status":"ok"}']
        # PEP 3333 hands the path over as latin-1 text: back to its bytes, then percent-encoded.
        path = quote(environ.get("PATH_INFO", "/").encode("latin-1"), safe="/:@!$&'()*+,;=-._~%")
        query = environ.get("QUERY_STRING", "")
        location = f"{base}{path}" + (f"?{query}" if query else "")
        start_response(
            "308 Permanent Redirect",
            [("Location", location), ("Content-Type", "text/plain"), ("Strict-Transport-Security", HSTS)],
        )
        return [b"use HTTPS\n"]

    return app


def bind_url(host: str, port: int) -> str:
    """The https address of a bind address: a wildcard bind is reached as localhost, port 443 left out."""
    # bandit B104: a comparison with the wildcard address, not a bind to it
    if host in ("", "0.0.0.0", "::"):  # nosec B104
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"https://{host}" + ("" if port == 443 else f":{port}")


class ConsoleServer:
    """The running HTTPS server (and the optional HTTP redirector), each in a thread of its own."""

    def __init__(
        self,
        app: Callable,
        host: str,
        port: int,
        cert: Path,
        key: Path,
        http_host: str | None = None,
        http_port: int = 0,
        threads: int = 16,
        public_url: str = "",
    ) -> None:
        self.https = wsgi.Server((host, port), app, numthreads=threads, server_name=SERVER_NAME)
        adapter = BuiltinSSLAdapter(str(cert), str(key))
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.https.ssl_adapter = adapter
        # Requests under way get a few seconds at shutdown; a keep-alive client must not hold the stop up.
        self.https.shutdown_timeout = 3
        self.https.prepare()
        self.port = self.https.bind_addr[1]
        self.host = self.https.bind_addr[0]
        self.http: wsgi.Server | None = None
        self.http_port = 0
        if http_host is not None:
            redirector = redirect_app(public_url or bind_url(self.host, self.port))
            self.http = wsgi.Server((http_host, http_port), redirector, numthreads=2, server_name=SERVER_NAME)
            self.http.shutdown_timeout = 3
            self.http.prepare()
            self.http_port = self.http.bind_addr[1]
        self._threads = [
            threading.Thread(target=server.serve, name=f"gateway-{i}", daemon=True)
            for i, server in enumerate(s for s in (self.https, self.http) if s is not None)
        ]

    def start(self) -> None:
        """Serve in background threads."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop accepting, finish the requests under way, and wait for the threads."""
        for server in (self.http, self.https):
            if server is not None:
                server.stop()
        for thread in self._threads:
            thread.join(5)
