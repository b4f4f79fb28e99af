"""Announcing erasures on NATS: each committed erasure is published once NATS takes it, in order."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from services.common import bus
from services.common.log import get_logger

log = get_logger(__name__)

# Erasures NATS did not take (it was away) are offered again this often.
RETRY_SECONDS = 30.0

SELECT_UNPUBLISHED = """
SELECT id, organization_id, subscriber_id, email_hash, erased_at FROM erasures
WHERE published_at IS NULL ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = "UPDATE erasures SET published_at = now() WHERE id = %s"


class ErasureAnnouncer:
    """Publishes the erasures lists committed (SubscriberErased, de-duplicated by its erasure id)."""

    def __init__(self, pool: AsyncConnectionPool, js: JetStreamContext) -> None:
        self._pool = pool
        self._js = js
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Publish now rather than at the next retry."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish every erasure not yet published; return how many were. Errors propagate."""
        published = 0
        while True:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(SELECT_UNPUBLISHED)
                rows = await cur.fetchall()
                for erasure_id, org, subscriber_id, hashed, erased_at in rows:
                    at = Timestamp()
                    at.FromDatetime(erased_at)
                    event = events_pb2.SubscriberErased(
                        erasure_id=f"erasure-{erasure_id}",
                        organization_id=org,
                        subscriber_id=subscriber_id,
                        email_hash=hashed,
                        erased_at=at,
                    )
                    await bus.publish(self._js, bus.SUBJECT_SUBSCRIBER_ERASED, event, msg_id=event.erasure_id)
                    await conn.execute(MARK_PUBLISHED, (erasure_id,))
                    published += 1
            if len(rows) < 500:
                return published

    async def run(self, stop: asyncio.Event) -> None:
        """Publish what is pending now, whenever kicked, and every RETRY_SECONDS, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("erasures not announced yet; will try again", retry_seconds=RETRY_SECONDS)
            self._wake.clear()
            waits = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
            try:
                await asyncio.wait(waits, timeout=RETRY_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
