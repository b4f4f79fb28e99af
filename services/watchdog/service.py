"""The watchdog: asks every service's gRPC health, watches the senders' backlog and the bounce and complaint
rates, and mails the operators an alert when something is wrong and the all-clear when it is right again.

It mails through a server of its own (WATCHDOG_SMTP_HOST), never through the senders, which it may be
alerting about. Every round (`check`) goes by the watchdog's clock, so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TypeVar

import aiosmtplib
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mailblast.v1 import events_pb2
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common import bus, settings
from services.common.clock import Clock, SystemClock
from services.common.decision import Ack, Decision
from services.common.log import get_logger
from services.common.metrics import MetricsServer, serve
from services.common.runner import Delivery, Runner
from services.common.settings import ConfigError
from services.watchdog.alerts import Backlog, Notice, Thresholds, Watch
from services.watchdog.config import Config

log = get_logger(__name__)
P = TypeVar("P")

_ATTEMPTS = {events_pb2.DELIVERY_OUTCOME_SENT, events_pb2.DELIVERY_OUTCOME_REJECTED}
_BATCHES = next(c for c in bus.SERVICE_ACCESS["watchdog"].watches if c.durable == "sender-batches")


def _when(stamp, fallback: dt.datetime) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC) if stamp.seconds else fallback


def _consumer(durable: str) -> bus.Consumer:
    return next(c for c in bus.SERVICE_ACCESS["watchdog"].consumes if c.durable == durable)


class _Watcher(Runner[P]):
    """A durable of the watchdog's: each event counts at the time it happened (a new durable reads the
    streams from their start, and what is older than the window falls out of it at once)."""

    durable_name = ""

    def __init__(self, js: JetStreamContext, watch: Watch, clock: Clock) -> None:
        consumer = _consumer(self.durable_name)
        super().__init__(
            js, stream=consumer.stream, durable=consumer.durable, subject=consumer.subject, slots=500, fetch=500
        )
        self._watch = watch
        self._clock = clock


class DeliveryWatcher(_Watcher[events_pb2.DeliveryReport]):
    """watchdog-delivery: the attempts that reached a server's answer, for the rates' denominator."""

    payload_type = events_pb2.DeliveryReport
    span_name = "watch deliveries"
    durable_name = "watchdog-delivery"

    async def dispose(self, payload: events_pb2.DeliveryReport, delivery: Delivery) -> Decision:
        now = self._clock.now()
        for event in payload.events:
            if event.outcome in _ATTEMPTS:
                self._watch.delivered(_when(event.occurred_at, now))
        return Ack()


class BounceWatcher(_Watcher[events_pb2.BounceEvent]):
    """watchdog-bounces: bounces and complaints, for the rates."""

    payload_type = events_pb2.BounceEvent
    span_name = "watch bounces"
    durable_name = "watchdog-bounces"

    async def dispose(self, payload: events_pb2.BounceEvent, delivery: Delivery) -> Decision:
        at = _when(payload.occurred_at, self._clock.now())
        if payload.kind == events_pb2.BOUNCE_KIND_COMPLAINT:
            self._watch.complained(at)
        elif payload.kind in (events_pb2.BOUNCE_KIND_HARD, events_pb2.BOUNCE_KIND_SOFT):
            self._watch.bounced(at)
        return Ack()


class Running:
    """A started watchdog: `check()` runs one round (the loop calls it every WATCHDOG_INTERVAL_SECONDS)."""

    def __init__(
        self, config: Config, clock: Clock, nc: NATS, js: JetStreamContext, consumers: list[Runner]
    ) -> None:
        self._config = config
        self._clock = clock
        self._nc = nc
        self._js = js
        self._consumers = consumers
        self._watch = Watch(
            Thresholds(
                down_after=config.down_after_seconds, queue_wait=config.queue_wait_seconds,
                rate_window=config.rate_window_seconds, min_deliveries=config.min_deliveries,
                bounce_rate=config.bounce_rate, complaint_rate=config.complaint_rate,
            )
        )  # fmt: skip
        self._credentials = config.grpc_tls.channel_credentials()
        self._addresses = dict(config.targets)
        self._channels = {name: self._channel(name) for name in self._addresses}
        self._unsent: list[Notice] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._metrics: MetricsServer | None = None
        self._round = asyncio.Lock()

    async def check(self) -> list[Notice]:
        """One round: take the events, ask every service, judge, mail what is due; return what was mailed."""
        async with self._round:
            for consumer in self._consumers:
                while await consumer.run_once(timeout=0.2):
                    pass
            answers = await asyncio.gather(*(self._health(name) for name in self._channels))
            for name, answer in zip(self._channels, answers, strict=True):
                self._watch.health(name, answer)
            now = self._clock.now()
            self._watch.backlog(await self._backlog(), now)
            due = self._unsent + self._watch.evaluate(now)
            self._unsent = []
            mailed = []
            for notice in due:
                log.warning("alert" if notice.firing else "all clear", key=notice.key, subject=notice.subject)
                try:
                    await self._mail(notice)
                    mailed.append(notice)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    log.error("alert mail not handed over; trying again next round", key=notice.key, error=str(exc))
                    self._unsent.append(notice)
            return mailed

    def _channel(self, name: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self._addresses[name], self._credentials)

    async def _health(self, name: str) -> str:
        try:
            reply = await health_pb2_grpc.HealthStub(self._channels[name]).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            # A channel that failed waits out its reconnect backoff: the next round asks on a fresh one, so
            # a service that is back is seen as back at once.
            old, self._channels[name] = self._channels[name], self._channel(name)
            await old.close()
            return f"{exc.code().name}: {exc.details()}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def _backlog(self) -> Backlog | None:
        try:
            info = await self._js.consumer_info(_BATCHES.stream, _BATCHES.durable, timeout=5)
        except NotFoundError:
            return None  # no sender has started yet: no backlog of theirs
        except Exception:
            log.warning("cannot read the senders' backlog from NATS")
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return Backlog((info.num_pending or 0) + (info.num_ack_pending or 0), floor or 0)

    async def _mail(self, notice: Notice) -> None:
        config = self._config
        message = EmailMessage()
        message["From"] = config.mail_from
        message["To"] = ", ".join(config.operators)
        message["Subject"] = notice.subject
        message["Date"] = format_datetime(self._clock.now())
        message["Message-ID"] = make_msgid(domain=config.mail_from.rpartition("@")[2] or None)
        message["X-Mailblast-Alert"] = f"{notice.key} {'firing' if notice.firing else 'resolved'}"
        message.set_content(notice.body)
        context = ssl.create_default_context(cafile=config.smtp_tls_ca_file or None)
        await aiosmtplib.send(
            message, hostname=config.smtp_host, port=config.smtp_port, tls_context=context, timeout=30
        )

    def watch(self) -> None:
        """Check every WATCHDOG_INTERVAL_SECONDS until stopped."""
        self._task = asyncio.create_task(self._loop(), name="watchdog")

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.check()
            except Exception:
                log.exception("watchdog round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._config.interval_seconds)

    async def stop(self) -> None:
        """Stop looking; close the connections."""
        self._stop.set()
        if self._task is not None:
            await self._task
        for consumer in self._consumers:
            await consumer.stop()
        for channel in self._channels.values():
            await channel.close()
        await self._nc.drain()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.stop)


async def start(config: Config, *, clock: Clock | None = None, watch: bool = True) -> Running:
    """Connect to NATS, bind the watchdog's durables and start checking (unless told not to: tests step it)."""
    if config.grpc_tls.identity() != "watchdog":
        raise ConfigError(f"{settings.TLS_CERT_FILE.env} names {config.grpc_tls.identity()!r}, not watchdog")
    nc, js = await bus.connect(config.nats_url, "watchdog", config.nats_creds_file, config.nats_stream_replicas)
    clock = clock or SystemClock()
    consumers: list[Runner] = []
    running = Running(config, clock, nc, js, consumers)
    for kind in (DeliveryWatcher, BounceWatcher):
        consumer = kind(js, running._watch, clock)
        await consumer.start()
        consumers.append(consumer)
    running._metrics = serve(config.metrics_bind)
    if watch:
        running.watch()
    log.info("watchdog started", targets=[name for name, _ in config.targets], operators=len(config.operators))
    return running
