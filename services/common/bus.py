"""NATS JetStream for the services: subjects, streams, traced publishing and a pull-consumer loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from services.common.log import get_logger
from services.common.tracing import inject_headers

log = get_logger(__name__)

SUBJECT_SEND_BATCH = "mailblast.send.batch"
SUBJECT_SEND_TRANSACTIONAL = "mailblast.send.transactional"
SUBJECT_DELIVERY_REPORT = "mailblast.delivery.report"
SUBJECT_BOUNCE_RECORDED = "mailblast.bounce.recorded"
SUBJECT_SUBSCRIBER_ERASED = "mailblast.privacy.erased"
SUBJECT_DEAD_LETTER = "mailblast.deadletter"

STREAM_SEND = "MAILBLAST_SEND"
STREAM_DELIVERY = "MAILBLAST_DELIVERY"
STREAM_BOUNCE = "MAILBLAST_BOUNCE"
STREAM_PRIVACY = "MAILBLAST_PRIVACY"
STREAM_DEAD_LETTER = "MAILBLAST_DEADLETTER"

_DAY = 24 * 3600.0

# Send work is a work queue: one sender takes each batch. Events are kept for a week so that a
# service that was down catches up. The duplicate window lets a restarted fan-out republish safely.
STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=STREAM_SEND,
        subjects=[SUBJECT_SEND_BATCH, SUBJECT_SEND_TRANSACTIONAL],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=6 * 3600.0,
        max_msg_size=32 * 1024 * 1024,
    ),
    StreamConfig(
        name=STREAM_DELIVERY,
        subjects=[SUBJECT_DELIVERY_REPORT],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=7 * _DAY,
        duplicate_window=3600.0,
    ),
    StreamConfig(
        name=STREAM_BOUNCE,
        subjects=[SUBJECT_BOUNCE_RECORDED],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * _DAY,
        duplicate_window=3600.0,
    ),
    # Erasures are few and small and carry no address: kept for a year, so that a service that was down
    # (or restored from a backup) still erases what it holds when it comes back.
    StreamConfig(
        name=STREAM_PRIVACY,
        subjects=[SUBJECT_SUBSCRIBER_ERASED],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=365 * _DAY,
        duplicate_window=24 * 3600.0,
    ),
    StreamConfig(
        name=STREAM_DEAD_LETTER,
        subjects=[f"{SUBJECT_DEAD_LETTER}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * _DAY,
    ),
)


async def connect(url: str, name: str) -> tuple[NATS, JetStreamContext]:
    """Connect to NATS, make sure the mailblast streams exist, and return the client and JetStream."""
    nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    await ensure_streams(js)
    return nc, js


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the mailblast streams that are missing, and add subjects a newer release introduced."""
    for config in STREAMS:
        try:
            info = await js.stream_info(config.name)
            if set(config.subjects or []) - set(info.config.subjects or []):
                await js.update_stream(config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Another service created it between our look and our add.
                await js.stream_info(config.name)


async def publish(
    js: JetStreamContext, subject: str, message: Message, msg_id: str | None = None, timeout: float = 10.0
) -> None:
    """Publish a protobuf payload with the current trace context (and a de-duplication id if given)."""
    headers = inject_headers()
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    await js.publish(subject, message.SerializeToString(), headers=headers, timeout=timeout)


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str) -> None:
    """Keep a payload no consumer can use, with the reason, then stop its redelivery."""
    headers = dict(msg.headers or {})
    headers["Mailblast-Dead-Reason"] = reason[:500]
    headers["Mailblast-Original-Subject"] = msg.subject
    await js.publish(f"{SUBJECT_DEAD_LETTER}.{msg.subject}", msg.data, headers=headers)
    await msg.term()
    log.error("payload moved to dead letters", subject=msg.subject, reason=reason)


def decode(msg: Msg, message_type: type[Message]) -> Message:
    """Parse a protobuf payload; raises DecodeError for bytes that are not one."""
    parsed = message_type()
    parsed.ParseFromString(msg.data)
    return parsed


@dataclass
class PullConsumer:
    """A durable pull consumer; `run_once` handles one fetched batch so tests never sleep."""

    js: JetStreamContext
    stream: str
    durable: str
    subject: str
    handler: Callable[[list[Msg]], Awaitable[None]]
    batch: int = 100
    ack_wait: float = 60.0
    max_ack_pending: int = 20_000
    _sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        """Bind to (or create) the durable consumer."""
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.subject,
        )
        self._sub = await self.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=config)

    async def run_once(self, timeout: float = 1.0) -> int:
        """Fetch up to `batch` messages (waiting at most `timeout`), hand them over, return how many."""
        assert self._sub is not None, "start() first"
        try:
            msgs = await self._sub.fetch(self.batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return 0
        if msgs:
            await self.handler(msgs)
        return len(msgs)

    async def run(self, stop: asyncio.Event) -> None:
        """Handle batches until `stop` is set; a failing batch is logged and left for redelivery."""
        while not stop.is_set():
            try:
                await self.run_once(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer batch failed; its messages will be redelivered", durable=self.durable)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Leave the subscription (the durable consumer stays on the server)."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


__all__ = ["DecodeError", "PullConsumer", "connect", "dead_letter", "decode", "publish"]
