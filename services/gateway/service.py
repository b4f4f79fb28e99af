"""Starting and stopping the console: its certificate, the Flask app, and cheroot's HTTPS (and redirect) listeners.

Flask is synchronous and cheroot serves it from threads of its own; `start` and `Running.stop` are coroutines
only so the gateway runs under the same `serve_until_signalled` as every other service.
"""

from __future__ import annotations

import asyncio

from flask import Flask

from services.gateway.app import create_app
from services.gateway.certificate import console_certificate
from services.gateway.config import Config
from services.gateway.server import ConsoleServer


class Running:
    """The started console: `port`, `http_port` (0 without a redirecting listener), `url` and `stop()`."""

    def __init__(self, app: Flask, server: ConsoleServer, config: Config) -> None:
        self.app = app
        self._server = server
        self._config = config
        self.host = server.host
        self.port = server.port
        self.http_port = server.http_port
        self.url = f"https://{server.host}:{server.port}/"

    @property
    def ready_details(self) -> dict[str, str]:
        """Where it listens, for the "service ready" line."""
        http_bind = f"{self._config.http_host}:{self.http_port}" if self._server.http else ""
        return {"bind": f"{self.host}:{self.port}", "url": self.url, "http_bind": http_bind}

    async def stop(self) -> None:
        """Stop accepting, finish the requests under way, then close the channels to the services."""
        await asyncio.to_thread(self._server.stop)
        self.app.extensions["mailblast_backends"].close()


async def start(config: Config) -> Running:
    """Make (or take) the certificate, build the app and serve it over HTTPS from background threads."""
    cert, key = console_certificate(config)
    app = create_app(settings=config)
    server = ConsoleServer(
        app, config.host, config.port, cert, key, config.http_host, config.http_port, public_url=config.public_url
    )
    server.start()
    return Running(app, server, config)
