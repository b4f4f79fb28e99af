"""Running a service process: start, report ready, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from services.common.log import configure_logging, get_logger
from services.common.settings import ConfigError
from services.common.tracing import setup_tracing, shutdown_tracing

log = get_logger(__name__)


class Stoppable(Protocol):
    """A started service."""

    async def stop(self) -> None:
        """Stop it, finishing the work under way."""


async def serve_until_signalled(start: Callable[[], Awaitable[Stoppable]], name: str) -> None:
    """Start the service, wait for SIGTERM/SIGINT, then stop it gracefully.

    A service whose Running has `ready_details` (a mapping, e.g. the addresses it serves) reports them in its
    "service ready" line.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start()
    details: Mapping[str, object] = getattr(running, "ready_details", {})
    log.info("service ready", name=name, **details)
    await stop.wait()
    log.info("service stopping", name=name)
    await running.stop()
    shutdown_tracing()
    log.info("service stopped", name=name)


def run_service(
    name: str,
    start: Callable[[], Awaitable[Stoppable]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """A service's main(): JSON logs and tracing for `name`, then serve until signalled (on a loop
    from `loop_factory`, default asyncio's).

    A setting that is missing or wrong stops start-up with one log line naming it and exit code 2.
    """
    configure_logging(name)
    setup_tracing(name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve_until_signalled(start, name))
    except ConfigError as exc:
        log.error("cannot start", name=name, error=str(exc))
        raise SystemExit(2) from None
