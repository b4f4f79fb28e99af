"""Group commit: outcomes pending at one moment are written in one transaction, then reported."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from services.common.log import get_logger
from services.sender.store import DeliveryStore, Outcome

log = get_logger(__name__)

Report = Callable[[Sequence[Outcome]], Awaitable[None]]


class LedgerWriter:
    """Commits outcomes promptly in small groups; each submit's future resolves once its group is
    committed and reported, so a batch is acknowledged only after all its outcomes are safe."""

    def __init__(self, store: DeliveryStore, report: Report, max_group: int = 1000) -> None:
        self._store = store
        self._report = report
        self._max_group = max_group
        self._pending: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the writing task."""
        self._task = asyncio.create_task(self._run(), name="sender-ledger-writer")

    def submit(self, outcome: Outcome) -> asyncio.Future[None]:
        """Queue an outcome; the future is done when it is committed (or fails with the write's error)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
                await self._write(group)
            if self._stopping:
                return

    async def _write(self, group: list[tuple[Outcome, asyncio.Future[None]]]) -> None:
        try:
            # As written: an erased subscriber's outcome carries the keyed hash, never the address.
            outcomes = await self._store.record([outcome for outcome, _ in group])
        except Exception as exc:
            log.exception("ledger write failed; the batches concerned will be retried", outcomes=len(group))
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        # The ledger is the truth; the report follows it. Keep trying while NATS is away, which
        # also holds back the acks of the batches waiting on this group.
        delay = 0.2
        while True:
            try:
                await self._report(outcomes)
                break
            except Exception:
                if self._stopping:
                    log.exception("delivery report lost at shutdown", outcomes=len(group))
                    break
                log.exception("delivery report publish failed; retrying", outcomes=len(group))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for _, future in group:
            if not future.done():
                future.set_result(None)

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30.0)
            except TimeoutError:
                self._task.cancel()
            self._task = None
