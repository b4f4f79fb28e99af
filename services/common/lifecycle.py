"""Running a service process: start, report ready, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.common.log import get_logger
from services.common.tracing import shutdown_tracing

log = get_logger(__name__)


class Stoppable(Protocol):
    """A started service."""

    async def stop(self) -> None:
        """Stop it, finishing the work under way."""


async def serve_until_signalled(start: Callable[[], Awaitable[Stoppable]], name: str) -> None:
    """Start the service, wait for SIGTERM/SIGINT, then stop it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start()
    log.info("service ready", name=name)
    await stop.wait()
    log.info("service stopping", name=name)
    await running.stop()
    shutdown_tracing()
    log.info("service stopped", name=name)
