"""Waiting for something the services do in their own time: ask again until it holds, or fail at a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def poll(
    check: Callable[[], Awaitable[Any] | Any], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """The first truthy value of `check()` (a plain or a coroutine function), asked every `interval`
    seconds; TimeoutError naming `what` and the last value once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:g}s (last: {value!r})")
        await asyncio.sleep(interval)
