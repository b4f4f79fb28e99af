"""Erasure of a subscriber in the services that hold its address: the runner of lists'
mailblast.privacy.erased events, and the lock that keeps ledger writes from racing an erasure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from psycopg import AsyncConnection

from services.common import bus
from services.common.log import get_logger
from services.common.runner import Ack, DeadLetter, Decision, Delivery, Runner

log = get_logger(__name__)

# A failure that is not the event's fault (database down) is retried after this pause.
RETRY_DELAY_SECONDS = 5.0
_HASH_LENGTH = 64


@dataclass(frozen=True)
class Erasure:
    """One subscriber lists erased: the service removes what it holds, keeping the keyed hash at most."""

    erasure_id: str
    organization_id: int
    subscriber_id: int
    email_hash: str
    erased_at: dt.datetime


def erasure_of(event: events_pb2.SubscriberErased) -> Erasure | None:
    """The erasure an event asks for; None when it lacks what an erasure needs to find the rows."""
    if event.organization_id <= 0 or event.subscriber_id <= 0 or len(event.email_hash) != _HASH_LENGTH:
        return None
    erased_at = event.erased_at.ToDatetime(tzinfo=dt.UTC) if event.HasField("erased_at") else dt.datetime.now(dt.UTC)
    return Erasure(event.erasure_id, event.organization_id, event.subscriber_id, event.email_hash, erased_at)


class ErasureConsumer(Runner[events_pb2.SubscriberErased]):
    """<service>-erasures: applies each erasure with `erase`, which must be idempotent (events are redelivered).

    One at a time: an erasure takes its organisation's erasure lock exclusively.
    """

    payload_type = events_pb2.SubscriberErased
    span_name = "erase subscriber"

    def __init__(self, js: JetStreamContext, durable: str, erase: Callable[[Erasure], Awaitable[None]]) -> None:
        super().__init__(
            js, stream=bus.STREAM_PRIVACY, durable=durable, subject=bus.SUBJECT_SUBSCRIBER_ERASED,
            retry_delay=RETRY_DELAY_SECONDS,
        )  # fmt: skip
        self._erase = erase

    def describe(self, event: events_pb2.SubscriberErased, delivery: Delivery) -> dict[str, Any]:
        """The organisation and the subscriber (never the address, nor its hash)."""
        return {"mailblast.organization_id": event.organization_id, "mailblast.subscriber_id": event.subscriber_id}

    async def dispose(self, event: events_pb2.SubscriberErased, delivery: Delivery) -> Decision:
        """Erase what the service holds; acknowledged only once that is committed."""
        erasure = erasure_of(event)
        if erasure is None:
            return DeadLetter("SubscriberErased lacks an organisation, a subscriber or a keyed hash")
        await self._erase(erasure)
        log.info(
            "subscriber erased here",
            durable=self.durable,
            organization_id=erasure.organization_id,
            subscriber_id=erasure.subscriber_id,
        )
        return Ack()


def _lock_key(service: str, organization_id: int) -> str:
    return f"mailblast-erasure:{service}:{organization_id}"


async def hold_off_erasures(conn: AsyncConnection, service: str, organization_ids: Iterable[int]) -> None:
    """In a writer's transaction, before it reads which subscribers are erased: an erasure of these
    organisations waits for the transaction to end, and one under way finishes before it goes on, so a
    row is either written knowing of the erasure or already there for the erasure to rewrite."""
    for organization_id in sorted(set(organization_ids)):
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (_lock_key(service, organization_id),)
        )


async def exclude_writers(conn: AsyncConnection, service: str, organization_id: int) -> None:
    """In an erasure's transaction, first: wait for the organisation's writers under way, hold off new ones."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_lock_key(service, organization_id),))
