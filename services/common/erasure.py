"""Erasure of a subscriber in the services that hold its address: the durable consumer of lists'
mailblast.privacy.erased events, and the lock that keeps ledger writes from racing an erasure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from mailblast.v1 import events_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from psycopg import AsyncConnection

from services.common import bus
from services.common.log import get_logger
from services.common.tracing import extract_context

log = get_logger(__name__)
tracer = trace.get_tracer("mailblast.erasure")

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


def erasure_consumer(
    js: JetStreamContext, durable: str, erase: Callable[[Erasure], Awaitable[None]]
) -> bus.PullConsumer:
    """The service's durable consumer of erasures; `erase` must be idempotent (events are redelivered)."""

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                event = bus.decode(msg, events_pb2.SubscriberErased)
            except bus.DecodeError as exc:
                await bus.dead_letter(js, msg, f"not a SubscriberErased: {exc}")
                continue
            if event.organization_id <= 0 or event.subscriber_id <= 0 or len(event.email_hash) != _HASH_LENGTH:
                await bus.dead_letter(js, msg, "SubscriberErased lacks an organisation, a subscriber or a keyed hash")
                continue
            erased_at = (
                event.erased_at.ToDatetime(tzinfo=dt.UTC) if event.HasField("erased_at") else dt.datetime.now(dt.UTC)
            )
            erasure = Erasure(event.erasure_id, event.organization_id, event.subscriber_id, event.email_hash, erased_at)
            with tracer.start_as_current_span(
                "erase subscriber", context=extract_context(msg.headers), kind=trace.SpanKind.CONSUMER,
                attributes={"mailblast.organization_id": erasure.organization_id,
                            "mailblast.subscriber_id": erasure.subscriber_id},
            ) as span:  # fmt: skip
                try:
                    await erase(erasure)
                except Exception as exc:
                    span.record_exception(exc)
                    log.exception("erasure not applied; it will be redelivered", durable=durable)
                    await msg.nak(delay=RETRY_DELAY_SECONDS)
                    continue
            # Acknowledged only once what the service held is erased and committed.
            await msg.ack()
            log.info(
                "subscriber erased here",
                durable=durable,
                organization_id=erasure.organization_id,
                subscriber_id=erasure.subscriber_id,
            )

    return bus.PullConsumer(js, bus.STREAM_PRIVACY, durable, bus.SUBJECT_SUBSCRIBER_ERASED, handle, batch=50)


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
