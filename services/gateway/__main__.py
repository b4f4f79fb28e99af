"""Run the gateway with waitress on GATEWAY_BIND until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from waitress.server import create_server

from services.common.config import ConfigError
from services.common.log import configure_logging, get_logger
from services.gateway.app import create_app
from services.gateway.config import Config

log = get_logger("services.gateway")


def _already_stopping(signum: int, _frame: FrameType | None) -> None:
    """A second signal (Ctrl-C, then the supervisor's SIGTERM) must not interrupt the stop under way."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    # waitress leaves its loop on SystemExit, finishing the requests under way. A no-op handler rather
    # than SIG_IGN for the next ones: Python reports a signal caught while it switched to SIG_IGN.
    signal.signal(signal.SIGTERM, _already_stopping)
    signal.signal(signal.SIGINT, _already_stopping)
    raise SystemExit(0)


def main() -> int:
    """Serve the gateway; return the process exit code."""
    configure_logging("gateway")
    try:
        config = Config.from_env()
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return 2
    server = create_server(create_app(), host=config.host, port=config.port, ident="mailblast")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("service ready", name="gateway", bind=f"{server.effective_host}:{server.effective_port}")
    try:
        server.run()
    finally:
        server.close()
    log.info("service stopped", name="gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
