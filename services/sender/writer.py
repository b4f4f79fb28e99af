"""Group commit of outcomes: those pending at one moment are written in one transaction, then reported."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import psycopg
from psycopg_pool import PoolTimeout

from services.common.log import get_logger
from services.common.runner import GroupCommit
from services.sender.ledger import Outcome
from services.sender.store import DeliveryStore

log = get_logger(__name__)

Report = Callable[[Sequence[Outcome]], Awaitable[None]]


class LedgerWriter:
    """The send path's Recorder: each submit's future resolves once its group is committed and reported,
    so a batch is acknowledged only after all its outcomes are safe."""

    def __init__(self, store: DeliveryStore, report: Report, max_group: int = 1000) -> None:
        self._store = store
        self._report = report
        self._commit: GroupCommit[Outcome, Outcome] = GroupCommit(self._write, max_group)

    def start(self) -> None:
        """Start the writing task."""
        self._commit.start("sender-ledger-writer")

    def submit(self, outcome: Outcome) -> asyncio.Future[Outcome]:
        """Queue an outcome; the future is done when it is committed and reported (or fails with the write's error)."""
        return self._commit.submit(outcome)

    async def _write(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        written = await self._record(outcomes)
        # The ledger is the truth; the report follows it. Keep trying while NATS is away, which
        # also holds back the acks of the batches waiting on this group.
        delay = 0.2
        while True:
            try:
                await self._report(written)
                return written
            except Exception:
                if self._commit.stopping:
                    log.exception("delivery report lost at shutdown", outcomes=len(written))
                    return written
                log.exception("delivery report publish failed; retrying", outcomes=len(written))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _record(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write the group, trying again while PostgreSQL is away: these messages were delivered, and failing
        the group would have their batches retried and the mail sent twice. Rewriting a group whose commit
        was lost on the way is harmless: a final row is never overwritten."""
        delay = 0.2
        while True:
            try:
                # As written: an erased subscriber's outcome carries the keyed hash, never the address.
                return await self._store.record(outcomes)
            except (psycopg.OperationalError, PoolTimeout):
                if self._commit.stopping:
                    raise
                log.warning("ledger write failed; retrying", outcomes=len(outcomes), exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop(self) -> None:
        """Write what is pending, then stop."""
        await self._commit.stop()
