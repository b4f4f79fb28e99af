"""One JetStream runner for every consumer (Mailman's Runner._dispose): a subclass writes `dispose`.

The runner does the rest once: it binds the durable pull consumer, fetches no more messages than it
has free slots, decodes each payload (an undecodable one is dead-lettered with its reason), continues
the publisher's trace in a consumer span, tells JetStream the message is in progress while `dispose`
runs, and settles the message by the decision: `Ack`, `Nak(delay)`, `Term(reason)`, `DeadLetter(reason)`.
An exception in `dispose` is logged and the message nak'ed after `retry_delay`. `run_once` takes one
fetch and waits for it to be settled, so tests step a consumer without sleeping; `stop(grace)` lets
work under way finish, then cancels it and naks its messages for redelivery.

A consumer that writes in groups (counters, copies) submits each message's work to a `GroupCommit`
and awaits it in `dispose`: one transaction per group, each message settled once its group is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from services.common import bus, metrics
from services.common.decision import Ack, DeadLetter, Decision, Nak, Term
from services.common.log import get_logger
from services.common.tracing import extract_context

__all__ = ["Ack", "DeadLetter", "Decision", "Delivery", "GroupCommit", "GroupRunner", "Nak", "Runner", "Term"]

log = get_logger(__name__)
tracer = trace.get_tracer("mailblast.runner")

P = TypeVar("P", bound=Message)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Delivery:
    """How a message came: its subject, the how-many-th delivery this is, and its headers."""

    subject: str
    count: int
    headers: Mapping[str, str] = field(default_factory=dict)


class Runner(Generic[P]):
    """A durable pull consumer whose decoded messages `dispose` decides about, `slots` at a time."""

    # The protobuf message type of the payload; set by each subclass.
    payload_type: type[P]
    # The consumer span's name, e.g. "send batch".
    span_name: str = "consume"

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subject: str,
        slots: int = 1,
        fetch: int | None = None,
        ack_wait: float = 60.0,
        retry_delay: float = 5.0,
        max_ack_pending: int = 20_000,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self._slots = max(1, slots)
        # Fetched at most at once (never more than free slots): a message waits on the server, not here.
        self._fetch = max(1, fetch or slots)
        self._ack_wait = ack_wait
        self._retry_delay = retry_delay
        self._max_ack_pending = max_ack_pending
        self._sub: JetStreamContext.PullSubscription | None = None
        self._tasks: dict[asyncio.Task[None], Msg] = {}
        self._room = asyncio.Event()
        # Durables are named <service>-<purpose>.
        self._service = durable.split("-", 1)[0]
        self._pending = metrics.CONSUMER_PENDING.labels(self._service, durable)

    async def dispose(self, payload: P, delivery: Delivery) -> Decision:
        """Decide about one message; the only method a consumer writes."""
        raise NotImplementedError

    def describe(self, payload: P, delivery: Delivery) -> dict[str, Any]:
        """Span attributes naming what the message is about (ids, never addresses)."""
        return {}

    # ------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind to (or create) the durable consumer."""
        config = ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=self._max_ack_pending,
            filter_subject=self.subject,
        )
        self._sub = await self.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=config)
        info = await self.js.consumer_info(self.stream, self.durable)
        if info.config.filter_subject != self.subject:
            # A durable made by an older release keeps its filter until told.
            await self.js.add_consumer(self.stream, config)

    async def run_once(self, timeout: float = 1.0) -> int:
        """Fetch what free slots allow (waiting at most `timeout`), settle it all; return how many came."""
        started = await self._take(timeout)
        if started:
            await asyncio.wait(started)
        return len(started)

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and work until `stop` is set; messages are settled in the background, `slots` at once."""
        while not stop.is_set():
            if not await self._wait_for_room(stop):
                return
            try:
                await self._take(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetch failed; trying again", durable=self.durable)
                await asyncio.sleep(1.0)

    async def idle(self) -> None:
        """Wait until no message is being worked on."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop fetching; give messages under way `grace` seconds, then cancel them and nak for redelivery."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
        abandoned = [self._tasks[task] for task in pending if task in self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for msg in abandoned:
            try:
                # What dispose already committed stays; redelivery does only the rest.
                await msg.nak()
            except Exception:
                log.warning("could not nak an abandoned message; it returns after ack_wait", durable=self.durable)

    # ------------------------------------------------------------------------------- one message

    async def _wait_for_room(self, stop: asyncio.Event) -> bool:
        """Wait for a free slot; False when `stop` came first."""
        while len(self._tasks) >= self._slots:
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({room, stopped}, return_when=asyncio.FIRST_COMPLETED)
            room.cancel()
            stopped.cancel()
            if stop.is_set():
                return False
        return True

    async def _take(self, timeout: float) -> list[asyncio.Task[None]]:
        assert self._sub is not None, "start() first"
        room = self._slots - len(self._tasks)
        if room <= 0:
            return []
        try:
            msgs = await self._sub.fetch(min(self._fetch, room), timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            self._pending.set(0)
            return []
        last = msgs[-1].metadata if msgs else None
        self._pending.set(last.num_pending if last and last.num_pending is not None else 0)
        started = []
        for msg in msgs:
            task = asyncio.create_task(self._settle(msg), name=f"{self.durable}-message")
            self._tasks[task] = msg
            task.add_done_callback(self._finished)
            started.append(task)
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            # Settling itself failed (NATS away): the message returns after ack_wait.
            log.error(
                "message not settled; it returns after ack_wait", durable=self.durable, error=str(task.exception())
            )

    async def _settle(self, msg: Msg) -> None:
        metadata = msg.metadata
        delivery = Delivery(msg.subject, (metadata.num_delivered if metadata else None) or 1, dict(msg.headers or {}))
        try:
            payload = bus.decode(msg, self.payload_type)
        except DecodeError as exc:
            await self._apply(msg, DeadLetter(f"not a {self.payload_type.__name__}: {exc}"))
            return
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": self.durable,
            "messaging.message.delivery_count": delivery.count,
            **self.describe(payload, delivery),
        }
        with tracer.start_as_current_span(
            self.span_name, context=extract_context(msg.headers), kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            keeper = asyncio.create_task(self._keep_in_progress(msg))
            try:
                decision = await self.dispose(payload, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("message failed; it will be retried", durable=self.durable, delay=self._retry_delay)
                span.record_exception(exc)
                decision = Nak(self._retry_delay)
            finally:
                keeper.cancel()
            span.set_attribute("mailblast.decision", decision.name)
            if isinstance(decision, Term | DeadLetter):
                span.set_attribute("mailblast.decision_reason", decision.reason[:500])
            await self._apply(msg, decision)

    async def _apply(self, msg: Msg, decision: Decision) -> None:
        metrics.MESSAGES_CONSUMED.labels(self._service, self.durable, decision.name).inc()
        if isinstance(decision, Ack):
            await msg.ack()
        elif isinstance(decision, Nak):
            await msg.nak(delay=decision.delay or None)
        elif isinstance(decision, Term):
            log.info("message dropped", durable=self.durable, reason=decision.reason)
            await msg.term()
        else:
            await bus.dead_letter(self.js, msg, decision.reason)

    async def _keep_in_progress(self, msg: Msg) -> None:
        """Tell JetStream the message is still being worked on, so ack_wait does not run out mid-work."""
        try:
            while True:
                await asyncio.sleep(self._ack_wait / 3)
                await msg.in_progress()
        except asyncio.CancelledError:
            return
        except Exception:
            log.warning("could not extend a message's ack deadline", durable=self.durable)


class GroupRunner(Runner[P], Generic[P, T]):
    """A runner whose `dispose` submits each message's work to `self.writer`, a GroupCommit of `write`.

    Many slots, one transaction per group: messages that came together are written together, and each
    is settled once its group is committed (or retried when the write fails).
    """

    def __init__(
        self, js: JetStreamContext, *, write: Callable[[Sequence[T]], Awaitable[Sequence[None]]], **options: Any
    ) -> None:
        super().__init__(js, **options)
        self.writer: GroupCommit[T, None] = GroupCommit(write)

    async def start(self) -> None:
        """Start the group writer, then bind to the durable."""
        self.writer.start(self.durable)
        await super().start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages, then write what is pending."""
        await super().stop(grace)
        await self.writer.stop()


class GroupCommit(Generic[T, R]):
    """Writes items submitted at one moment together: `submit(item)` resolves once its group is written.

    `write(items)` returns one result per item, in order; when it raises, every item of the group
    fails with that error (and its message is retried by its runner).
    """

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_group: int = 1000) -> None:
        self._write = write
        self._max_group = max_group
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self, name: str = "group-commit") -> None:
        """Start the writing task."""
        self._task = asyncio.create_task(self._run(), name=name)

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue an item; the future is its result once written (or the write's error)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending[: self._max_group], self._pending[self._max_group :]
                await self._commit(group)
            if self._stopping:
                return

    async def _commit(self, group: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in group])
        except Exception as exc:
            log.exception("group write failed; its messages will be retried", items=len(group))
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    @property
    def stopping(self) -> bool:
        """True once stop() was called (a write may then give up retrying)."""
        return self._stopping

    async def stop(self, timeout: float = 30.0) -> None:
        """Write what is pending, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=timeout)
            except TimeoutError:
                self._task.cancel()
            self._task = None
