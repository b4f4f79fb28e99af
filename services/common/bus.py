"""NATS JetStream for the services: subjects, streams, permissions, traced publishing and dead letters.

Consumers are runners (runner.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from services.common.log import get_logger
from services.common.settings import ConfigError
from services.common.tracing import inject_headers

log = get_logger(__name__)

SUBJECT_SEND_BATCH = "mailblast.send.batch"
# Transactional mail travels on mailblast.send.transactional.<organisation id>: NATS permissions can
# then confine an application's credential to its own organisation's subject, and the sender refuses
# a message whose organisation differs from its subject's. The platform's own mails (auth's account
# notices, lists' confirmations, campaigns' test sends) travel on <organisation id>.platform, which only
# those services may publish: only there may a category skip the suppression list, so an application
# cannot mail an unsubscribed address by calling its message "auth.reset".
_TRANSACTIONAL = "mailblast.send.transactional"
_PLATFORM = "platform"
SUBJECT_SEND_TRANSACTIONAL = f"{_TRANSACTIONAL}.>"
SUBJECT_SEND_PLATFORM = f"{_TRANSACTIONAL}.*.{_PLATFORM}"
SUBJECT_DELIVERY_REPORT = "mailblast.delivery.report"
SUBJECT_BOUNCE_RECORDED = "mailblast.bounce.recorded"
SUBJECT_SUBSCRIBER_ERASED = "mailblast.privacy.erased"
SUBJECT_DEAD_LETTER = "mailblast.deadletter"
# mailblast.campaign.state.<organisation>.<campaign> and mailblast.suppression.changed.<organisation>.<keyed
# hash>: one subject per campaign and per address, so the stream can keep the last change of each.
_CAMPAIGN_STATE = "mailblast.campaign.state"
SUBJECT_CAMPAIGN_STATE = f"{_CAMPAIGN_STATE}.*.*"
_SUPPRESSION_CHANGED = "mailblast.suppression.changed"
SUBJECT_SUPPRESSION_CHANGED = f"{_SUPPRESSION_CHANGED}.*.*"

STREAM_SEND = "MAILBLAST_SEND"
STREAM_DELIVERY = "MAILBLAST_DELIVERY"
STREAM_BOUNCE = "MAILBLAST_BOUNCE"
STREAM_PRIVACY = "MAILBLAST_PRIVACY"
STREAM_DEAD_LETTER = "MAILBLAST_DEADLETTER"
STREAM_CAMPAIGN_STATE = "MAILBLAST_CAMPAIGN_STATE"
STREAM_SUPPRESSION = "MAILBLAST_SUPPRESSION"

_DAY = 24 * 3600.0
# JetStream keeps at most five copies of a stream.
MAX_STREAM_REPLICAS = 5

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
    # The current state of every campaign and of every suppression list, kept for good: the last change of
    # each subject stays (max_msgs_per_subject=1), so a sender that starts with nothing replays it all,
    # and the streams grow with campaigns and addresses, not with changes.
    StreamConfig(
        name=STREAM_CAMPAIGN_STATE,
        subjects=[SUBJECT_CAMPAIGN_STATE],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        duplicate_window=3600.0,
    ),
    StreamConfig(
        name=STREAM_SUPPRESSION,
        subjects=[SUBJECT_SUPPRESSION_CHANGED],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        duplicate_window=3600.0,
    ),
    StreamConfig(
        name=STREAM_DEAD_LETTER,
        subjects=[f"{SUBJECT_DEAD_LETTER}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=30 * _DAY,
    ),
)


def transactional_subject(organization_id: int, *, platform: bool = False) -> str:
    """The subject a TransactionalMessage of this organisation is published to (the platform's own apart)."""
    if organization_id <= 0:
        raise ValueError(f"a transactional message needs an organisation, not {organization_id}")
    subject = f"{_TRANSACTIONAL}.{organization_id}"
    return f"{subject}.{_PLATFORM}" if platform else subject


def campaign_state_subject(organization_id: int, campaign_id: int) -> str:
    """The subject a campaign's CampaignStateChanged is published to."""
    return f"{_CAMPAIGN_STATE}.{organization_id}.{campaign_id}"


def suppression_subject(organization_id: int, email_hash: str) -> str:
    """The subject an address's SuppressionChanged is published to (by its keyed hash)."""
    return f"{_SUPPRESSION_CHANGED}.{organization_id}.{email_hash}"


def subject_organization(subject: str) -> int | None:
    """The organisation a transactional subject names, or None when it names none."""
    subject = subject.removesuffix(f".{_PLATFORM}")
    prefix, _, last = subject.rpartition(".")
    if prefix != _TRANSACTIONAL or not last.isdigit():
        return None
    return int(last)


def is_platform_subject(subject: str) -> bool:
    """Whether a transactional subject is the platform's own (which only platform services may publish)."""
    return subject.endswith(f".{_PLATFORM}") and subject_organization(subject) is not None


# ------------------------------------------------------------------------------------- permissions


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer a service reads: its stream, durable name and filter subject."""

    stream: str
    durable: str
    subject: str


@dataclass(frozen=True)
class Access:
    """What one service does on NATS; its credential allows exactly this and nothing else."""

    publishes: tuple[str, ...] = ()
    consumes: tuple[Consumer, ...] = ()
    # Streams whose configuration this service may change (a newer release adding subjects). Any
    # service may create a stream it uses, so start-up order does not matter, but creating cannot
    # alter a stream that exists: the server refuses a different configuration under the same name.
    maintains: tuple[str, ...] = ()
    # Other services' durables whose state (backlog, progress) this service may read, and nothing more.
    watches: tuple[Consumer, ...] = ()

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams this service publishes to or consumes from (dead letters if it consumes)."""
        used = {_stream_of(subject) for subject in self.publishes} | {c.stream for c in self.consumes}
        if self.consumes:
            used.add(STREAM_DEAD_LETTER)
        return tuple(config.name for config in STREAMS if config.name in used)

    def publish_allow(self) -> list[str]:
        """The subjects its credential may publish to: its own, and the JetStream API for its streams."""
        allow = list(self.publishes)
        for consumer in self.consumes:
            allow += [
                f"{SUBJECT_DEAD_LETTER}.{consumer.subject}",
                f"$JS.API.CONSUMER.INFO.{consumer.stream}.{consumer.durable}",
                f"$JS.API.CONSUMER.CREATE.{consumer.stream}.{consumer.durable}.{consumer.subject}",
                f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.durable}",
                # ack, nak, term and in-progress all answer on the delivery's reply subject
                f"$JS.ACK.{consumer.stream}.{consumer.durable}.>",
            ]
        for stream in self.streams:
            allow += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]
        allow += [f"$JS.API.STREAM.UPDATE.{stream}" for stream in self.maintains]
        allow += [f"$JS.API.CONSUMER.INFO.{c.stream}.{c.durable}" for c in self.watches]
        return list(dict.fromkeys(allow))


def _covers(pattern: str, subject: str) -> bool:
    """Whether a stream's subject pattern takes every subject `subject` (itself perhaps a pattern) names."""
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]) or (part == "*" and have[i] == ">"):
            return False
    return len(want) == len(have)


def _stream_of(subject: str) -> str:
    return next(config.name for config in STREAMS if any(_covers(p, subject) for p in config.subjects or []))


SERVICE_ACCESS: dict[str, Access] = {
    "auth": Access(publishes=(SUBJECT_SEND_PLATFORM,)),
    # Each stream has one maintainer: the sender the work queue it drains and the reports it writes,
    # bounce its events, lists the erasures and suppressions it announces, campaigns its states. The
    # dead-letter stream's one subject (mailblast.deadletter.>) never changes.
    "lists": Access(
        publishes=(SUBJECT_SEND_PLATFORM, SUBJECT_SUBSCRIBER_ERASED, SUBJECT_SUPPRESSION_CHANGED),
        consumes=(Consumer(STREAM_BOUNCE, "lists-bounces", SUBJECT_BOUNCE_RECORDED),),
        maintains=(STREAM_PRIVACY, STREAM_SUPPRESSION),
    ),
    "campaigns": Access(
        publishes=(SUBJECT_SEND_BATCH, SUBJECT_SEND_PLATFORM, SUBJECT_CAMPAIGN_STATE),
        consumes=(
            Consumer(STREAM_DELIVERY, "campaigns-delivery", SUBJECT_DELIVERY_REPORT),
            Consumer(STREAM_BOUNCE, "campaigns-bounces", SUBJECT_BOUNCE_RECORDED),
            Consumer(STREAM_PRIVACY, "campaigns-erasures", SUBJECT_SUBSCRIBER_ERASED),
        ),
        maintains=(STREAM_CAMPAIGN_STATE,),
    ),
    "sender": Access(
        publishes=(SUBJECT_DELIVERY_REPORT,),
        consumes=(
            Consumer(STREAM_SEND, "sender-batches", SUBJECT_SEND_BATCH),
            Consumer(STREAM_SEND, "sender-transactional", SUBJECT_SEND_TRANSACTIONAL),
            Consumer(STREAM_PRIVACY, "sender-erasures", SUBJECT_SUBSCRIBER_ERASED),
            Consumer(STREAM_CAMPAIGN_STATE, "sender-campaign-states", SUBJECT_CAMPAIGN_STATE),
            Consumer(STREAM_SUPPRESSION, "sender-suppressions", SUBJECT_SUPPRESSION_CHANGED),
        ),
        maintains=(STREAM_SEND, STREAM_DELIVERY),
    ),
    "bounce": Access(
        publishes=(SUBJECT_BOUNCE_RECORDED,),
        consumes=(
            Consumer(STREAM_DELIVERY, "bounce-delivery", SUBJECT_DELIVERY_REPORT),
            Consumer(STREAM_PRIVACY, "bounce-erasures", SUBJECT_SUBSCRIBER_ERASED),
        ),
        maintains=(STREAM_BOUNCE,),
    ),
    # The operators' watchdog: it counts deliveries and bounces, and looks at the senders' backlog.
    "watchdog": Access(
        consumes=(
            Consumer(STREAM_DELIVERY, "watchdog-delivery", SUBJECT_DELIVERY_REPORT),
            Consumer(STREAM_BOUNCE, "watchdog-bounces", SUBJECT_BOUNCE_RECORDED),
        ),
        watches=(Consumer(STREAM_SEND, "sender-batches", SUBJECT_SEND_BATCH),),
    ),
}


def inbox_prefix(user_key: str) -> str:
    """The inbox prefix of a credential: replies (JetStream acks, pull deliveries) come only to its holder."""
    return f"_INBOX.{user_key}"


def credential_user_key(path: str) -> str:
    """The user public key in a .creds file; a file that is not one stops start-up naming it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"NATS_CREDS_FILE {path}: {exc.strerror}") from None
    lines = text.splitlines()
    try:
        token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        seed_at = next(i for i, line in enumerate(lines) if "BEGIN USER NKEY SEED" in line)
    except (ValueError, IndexError, StopIteration, UnicodeDecodeError):
        raise ConfigError(f"NATS_CREDS_FILE {path} is not a NATS user credentials file") from None
    if not str(claims.get("sub", "")).startswith("U") or not lines[seed_at + 1].strip().startswith("SU"):
        raise ConfigError(f"NATS_CREDS_FILE {path} is not a NATS user credentials file")
    return claims["sub"]


# ------------------------------------------------------------------------------------- connecting


async def connect(url: str, name: str, creds_file: str = "", stream_replicas: int = 1) -> tuple[NATS, JetStreamContext]:
    """Connect to NATS (with the .creds file if given), make sure this service's streams exist.

    Streams it creates are kept on `stream_replicas` servers (NATS_STREAM_REPLICAS). A server that
    refuses the credential at start stops start-up naming NATS_CREDS_FILE; an unreachable one is
    waited for, and a connection lost later is retried for ever.
    """
    if not 1 <= stream_replicas <= MAX_STREAM_REPLICAS:
        raise ConfigError(f"NATS_STREAM_REPLICAS={stream_replicas} must be between 1 and {MAX_STREAM_REPLICAS}")
    options: dict = {}
    if creds_file:
        options = {"user_credentials": creds_file, "inbox_prefix": inbox_prefix(credential_user_key(creds_file))}
    else:
        log.warning("NATS_CREDS_FILE is not set: connecting without credentials", service=name)
    nc = NATS()
    refused = asyncio.Event()

    async def report(exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if "authorization violation" in text.lower():
            refused.set()
            log.error("NATS refused the connection: check NATS_CREDS_FILE", service=name, error=text)
        elif "permissions violation" in text.lower():
            log.error("NATS refused an operation this service's credential does not allow", error=text)
        else:
            log.warning("NATS connection problem", error=text)

    connecting = asyncio.ensure_future(
        nc.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=report, **options)
    )
    refusal = asyncio.ensure_future(refused.wait())
    await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await nc.close()
        raise ConfigError(f"NATS refused the {name} service's connection: NATS_CREDS_FILE must name its credential")
    refusal.cancel()
    await connecting
    js = nc.jetstream()
    access = SERVICE_ACCESS.get(name)
    if access is None:
        await ensure_streams(js, replicas=stream_replicas)
    else:
        await ensure_streams(js, access.streams, access.maintains, stream_replicas)
    return nc, js


async def ensure_streams(
    js: JetStreamContext,
    names: tuple[str, ...] | None = None,
    maintains: tuple[str, ...] | None = None,
    replicas: int = 1,
) -> None:
    """Create the named streams (all by default) that are missing; update those this service maintains.

    A created stream gets `replicas` copies; an updated one keeps the replicas it has.
    """
    for config in STREAMS:
        if names is not None and config.name not in names:
            continue
        try:
            info = await js.stream_info(config.name)
            if set(config.subjects or []) - set(info.config.subjects or []):
                if maintains is None or config.name in maintains:
                    await js.update_stream(dataclasses.replace(config, num_replicas=info.config.num_replicas))
                else:
                    log.warning("stream lacks subjects of this release; its maintainer adds them", stream=config.name)
        except NotFoundError:
            try:
                await js.add_stream(dataclasses.replace(config, num_replicas=replicas))
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


__all__ = ["DecodeError", "connect", "dead_letter", "decode", "publish"]
