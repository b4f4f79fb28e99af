"""Announcing committed changes on NATS: an outbox table a trigger fills, relayed in order.

A service that must tell others the current state of something it owns (campaigns their states, lists
the suppression lists) lets a trigger write each change into an outbox table in the changing
transaction, with a growing id, and NOTIFY a channel. The relay wakes on that notification (within
milliseconds of the commit), publishes the rows in id order, and deletes them once NATS has them; it
also looks every `retry_seconds`, which covers a lost notification and NATS or the database being away.
One relay publishes at a time, whatever the number of replicas (an advisory lock), so the stream holds
each key's changes in commit order; the id travels in the event as its version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import psycopg
from google.protobuf.message import Message
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from services.common import bus
from services.common.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Announcement:
    """One outbox row as published: what it is about (newer rows of the same key supersede it), where, what."""

    key: Hashable
    subject: str
    message: Message
    msg_id: str


@dataclass(frozen=True)
class OutboxTable:
    """How to read one outbox: its rows (id first, oldest first, LIMIT %s), deleting them, its NOTIFY channel."""

    select_sql: str
    delete_sql: str
    channel: str
    announce: Callable[[tuple], Announcement]


class OutboxRelay:
    """Publishes an outbox table's rows once NATS takes them, then deletes them."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        js: JetStreamContext,
        table: OutboxTable,
        *,
        retry_seconds: float = 5.0,
        group: int = 500,
    ) -> None:
        self._pool = pool
        self._js = js
        self._table = table
        self._retry_seconds = retry_seconds
        self._group = group
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Publish now rather than at the next look."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish every row there is, oldest first; return how many rows were relayed. Errors propagate."""
        relayed = 0
        while True:
            async with self._pool.connection() as conn, conn.transaction():
                # One relay at a time: two publishing at once could reverse two changes of one key.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mailblast-outbox:{self._table.channel}",)
                )
                cur = await conn.execute(self._table.select_sql, (self._group,))
                rows = await cur.fetchall()
                if not rows:
                    return relayed
                latest: dict[Hashable, Announcement] = {}
                for row in rows:
                    announcement = self._table.announce(row)
                    # A newer change of the same key supersedes an older one still waiting.
                    latest.pop(announcement.key, None)
                    latest[announcement.key] = announcement
                await asyncio.gather(
                    *(bus.publish(self._js, a.subject, a.message, msg_id=a.msg_id) for a in latest.values())
                )
                await conn.execute(self._table.delete_sql, ([row[0] for row in rows],))
            relayed += len(rows)
            if len(rows) < self._group:
                return relayed

    async def run(self, stop: asyncio.Event) -> None:
        """Relay whenever the table is notified, and every `retry_seconds`, until `stop` is set."""
        listener = asyncio.create_task(self._listen(), name=f"outbox-listen-{self._table.channel}")
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.publish_pending()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("changes not announced yet; will try again", channel=self._table.channel)
                waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
                try:
                    await asyncio.wait(waits, timeout=self._retry_seconds, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        """Wake the relay on every notification of the table's channel; reconnect when the connection drops."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._pool.conninfo, autocommit=True) as conn:
                    await conn.execute(f'LISTEN "{self._table.channel}"')
                    # Changes committed while this connection was away are published now.
                    self._wake.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox notifications lost; listening again", channel=self._table.channel)
                await asyncio.sleep(1.0)
