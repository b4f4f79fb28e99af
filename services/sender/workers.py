"""Working on several NATS messages at once: take them off a pull consumer, bound them, stop cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.msg import Msg

from services.common import bus
from services.common.log import get_logger

log = get_logger(__name__)


class MessageWorkers:
    """Runs `process(msg)` for each fetched message, at most `slots` at once, on a durable pull consumer."""

    def __init__(self, consumer_args: dict, process: Callable[[Msg], Awaitable[None]], slots: int, what: str) -> None:
        self._process = process
        self._slots = asyncio.Semaphore(slots)
        self._what = what
        self.tasks: dict[asyncio.Task[None], Msg] = {}
        self.pull = bus.PullConsumer(handler=self._take, **consumer_args)

    async def start(self) -> None:
        """Bind to the durable consumer."""
        await self.pull.start()

    async def run_once(self, timeout: float = 1.0) -> int:
        """Fetch messages (waiting at most `timeout`) and start working on them; return how many came."""
        return await self.pull.run_once(timeout=timeout)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch messages until `stop` is set."""
        await self.pull.run(stop)

    async def idle(self) -> None:
        """Wait until no message is being worked on."""
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    async def _take(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            # Waiting here holds back the next fetch: a process takes no more than it works on.
            await self._slots.acquire()
            task = asyncio.create_task(self._process(msg))
            self.tasks[task] = msg
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
        self._slots.release()

    async def stop(self, grace: float, also_cancel: Iterable[asyncio.Task] = ()) -> None:
        """Stop fetching; give messages under way `grace` seconds, then cancel them and nak for redelivery.

        `also_cancel` names further tasks working for them (deliveries) to cancel with them.
        """
        await self.pull.stop()
        if not self.tasks:
            return
        _, pending = await asyncio.wait(list(self.tasks), timeout=grace)
        abandoned = [self.tasks.get(task) for task in pending]
        # A message cut off mid-SMTP may or may not have arrived; it is the only kind that can repeat.
        cancelled = [*pending, *also_cancel]
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        for msg in abandoned:
            if msg is not None:
                try:
                    # Outcomes already committed stay final; redelivery tries only the rest.
                    await msg.nak()
                except Exception:
                    log.warning(f"could not nak an abandoned {self._what}; it returns after ack_wait")
