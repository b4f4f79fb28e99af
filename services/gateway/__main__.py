"""Run the console over HTTPS on GATEWAY_BIND (and redirect GATEWAY_HTTP_BIND to it) until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from services.common.log import configure_logging, get_logger
from services.common.settings import ConfigError
from services.gateway.app import create_app
from services.gateway.certificate import console_certificate
from services.gateway.config import Config
from services.gateway.server import ConsoleServer

log = get_logger("services.gateway")


def main() -> int:
    """Serve the gateway; return the process exit code."""
    configure_logging("gateway")
    try:
        config = Config.from_env()
        cert, key = console_certificate(config)
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return 2
    app = create_app(settings=config)
    server = ConsoleServer(
        app, config.host, config.port, cert, key, config.http_host, config.http_port, public_url=config.public_url
    )
    stopping = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    log.info(
        "service ready",
        name="gateway",
        bind=f"{server.host}:{server.port}",
        url=f"https://{server.host}:{server.port}/",
        http_bind=f"{config.http_host}:{server.http_port}" if server.http else "",
    )
    while not stopping.wait(0.5):
        pass
    server.stop()
    app.extensions["mailblast_backends"].close()
    log.info("service stopped", name="gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
