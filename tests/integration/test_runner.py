"""The one JetStream runner on a real nats-server: decode, decide, settle, trace, keep alive, stop."""

from __future__ import annotations

import asyncio
import time

import pytest_asyncio
from mailblast.v1 import events_pb2
from nats.js.api import StreamConfig
from opentelemetry import trace

from services.common import bus
from services.common.runner import Ack, DeadLetter, Delivery, GroupCommit, Nak, Runner, Term

STREAM = "RUNNER_TEST"
SUBJECT = "runner.test.work"
DURABLE = "runner-test"


class Recording(Runner[events_pb2.SubscriberErased]):
    """A runner that records what it is given and answers as the test's `decide` says."""

    payload_type = events_pb2.SubscriberErased
    span_name = "test work"

    def __init__(self, js, decide, **options) -> None:
        super().__init__(js, stream=STREAM, durable=DURABLE, subject=SUBJECT, **options)
        self.decide = decide
        self.seen: list[tuple[str, Delivery]] = []

    async def dispose(self, payload, delivery):
        """Record the message, then decide as told."""
        self.seen.append((payload.erasure_id, delivery))
        return await self.decide(payload, delivery)

    def describe(self, payload, delivery):
        """Name the message in the span."""
        return {"test.id": payload.erasure_id}


@pytest_asyncio.fixture
async def js(nats_server):
    """A JetStream context (allowed everything) with the test stream and the dead letters."""
    nc = await nats_server.connect()
    context = nc.jetstream()
    await bus.ensure_streams(context, (bus.STREAM_DEAD_LETTER,))
    await context.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT]))
    try:
        yield context
    finally:
        await nc.close()


async def publish(js, *ids: str) -> None:
    """Publish one message per id, each with trace headers."""
    for message_id in ids:
        await bus.publish(js, SUBJECT, events_pb2.SubscriberErased(erasure_id=message_id))


async def settled(js, timeout: float = 20.0) -> None:
    """Wait until the durable has nothing pending or unacknowledged."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(STREAM, DURABLE)
        if (info.num_pending, info.num_ack_pending) == (0, 0):
            return
        assert time.monotonic() < deadline, (info.num_pending, info.num_ack_pending)
        await asyncio.sleep(0.05)


async def step_until(runner: Runner, done, timeout: float = 20.0) -> None:
    """Call run_once until done() holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "runner did not get there"
        await runner.run_once(timeout=0.5)


async def test_each_decision_settles_its_message_and_the_span_continues_the_trace(js, span_exporter):
    # Four messages, decided Ack, Nak(0.2 s) then Ack, Term and DeadLetter: the acked and terminated
    # ones come once, the nak'ed one again as its second delivery, the dead letter lands on the
    # dead-letter stream with its reason and original subject; nothing stays pending. Each consumer
    # span is a child of the publisher's trace and names the decision.
    span_exporter.clear()
    answers = {"a": [Ack()], "b": [Nak(0.2), Ack()], "c": [Term("not wanted")], "d": [DeadLetter("cannot use it")]}

    async def decide(payload, delivery):
        return answers[payload.erasure_id].pop(0)

    runner = Recording(js, decide, slots=4)
    await runner.start()
    with trace.get_tracer("test").start_as_current_span("publisher") as publisher:
        await publish(js, "a", "b", "c", "d")
    await step_until(runner, lambda: len(runner.seen) == 5)
    await settled(js)
    assert sorted((i, d.count) for i, d in runner.seen) == [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("d", 1)]
    assert all(d.subject == SUBJECT and "traceparent" in d.headers for _, d in runner.seen)
    dead = await js.get_last_msg(bus.STREAM_DEAD_LETTER, f"{bus.SUBJECT_DEAD_LETTER}.{SUBJECT}")
    assert events_pb2.SubscriberErased.FromString(dead.data).erasure_id == "d"
    assert dead.headers["Mailblast-Dead-Reason"] == "cannot use it"
    assert dead.headers["Mailblast-Original-Subject"] == SUBJECT
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "test work"]
    decisions = sorted((s.attributes["test.id"], s.attributes["mailblast.decision"]) for s in spans)
    assert decisions == [("a", "ack"), ("b", "ack"), ("b", "nak"), ("c", "term"), ("d", "dead_letter")]
    assert {s.context.trace_id for s in spans} == {publisher.get_span_context().trace_id}
    assert all(s.kind == trace.SpanKind.CONSUMER for s in spans)
    await runner.stop()


async def test_undecodable_payload_is_dead_lettered_without_reaching_dispose(js):
    # Bytes that are no payload of the runner's type go to the dead letters naming the type; dispose
    # never sees them, and the next good message is handled as usual.
    async def decide(payload, delivery):
        return Ack()

    runner = Recording(js, decide)
    await runner.start()
    await js.publish(SUBJECT, b"\xff\xff not protobuf")
    await publish(js, "good")
    await step_until(runner, lambda: len(runner.seen) == 1)
    await settled(js)
    assert [i for i, _ in runner.seen] == ["good"]
    dead = await js.get_last_msg(bus.STREAM_DEAD_LETTER, f"{bus.SUBJECT_DEAD_LETTER}.{SUBJECT}")
    assert dead.data == b"\xff\xff not protobuf"
    assert dead.headers["Mailblast-Dead-Reason"].startswith("not a SubscriberErased")
    await runner.stop()


async def test_an_exception_in_dispose_is_retried_after_the_retry_delay(js):
    # dispose fails the first time (the database is away, say): the message is nak'ed and comes back
    # after the retry delay, not at once and not never; the second try acknowledges it.
    failures = ["boom"]

    async def decide(payload, delivery):
        if failures:
            raise RuntimeError(failures.pop())
        return Ack()

    runner = Recording(js, decide, retry_delay=0.5)
    await runner.start()
    await publish(js, "x")
    await step_until(runner, lambda: len(runner.seen) == 1)
    failed_at = time.monotonic()
    await step_until(runner, lambda: len(runner.seen) == 2)
    assert time.monotonic() - failed_at >= 0.4
    assert [d.count for _, d in runner.seen] == [1, 2]
    await settled(js)
    await runner.stop()


async def test_no_more_messages_are_worked_on_at_once_than_there_are_slots(js):
    # Six messages and two slots: run_once takes two, run() never has more than two in dispose at a
    # time, and every message is settled once the work is let go.
    busy = 0
    most = 0
    release = asyncio.Event()

    async def decide(payload, delivery):
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await release.wait()
        busy -= 1
        return Ack()

    runner = Recording(js, decide, slots=2, fetch=10)
    await runner.start()
    await publish(js, *"123456")
    stepping = asyncio.create_task(runner.run_once(timeout=2.0))
    deadline = time.monotonic() + 10
    while busy < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    release.set()
    assert await stepping == 2
    release.clear()
    stop = asyncio.Event()
    looping = asyncio.create_task(runner.run(stop))
    while len(runner.seen) < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert busy == 2
    release.set()
    await settled(js)
    stop.set()
    await looping
    assert most == 2 and len(runner.seen) == 6
    await runner.stop()


async def test_work_longer_than_ack_wait_is_kept_alive_and_not_redelivered(js):
    # dispose takes three times the consumer's ack_wait: the runner keeps telling JetStream the message
    # is in progress, so it is not handed out a second time meanwhile, and is settled once.
    async def decide(payload, delivery):
        # The wait outlasting ack_wait is the behaviour under test.
        await asyncio.sleep(3.0)
        return Ack()

    runner = Recording(js, decide, ack_wait=1.0)
    await runner.start()
    other = Recording(js, decide, ack_wait=1.0)
    await other.start()
    await publish(js, "long")
    first = asyncio.create_task(runner.run_once(timeout=2.0))
    deadline = time.monotonic() + 10
    while not runner.seen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # Another process on the same durable would get a redelivery if the deadline ran out.
    while not first.done():
        await other.run_once(timeout=0.2)
    assert await first == 1
    assert [(i, d.count) for i, d in runner.seen] == [("long", 1)] and other.seen == []
    info = await js.consumer_info(STREAM, DURABLE)
    assert (info.num_redelivered, info.num_ack_pending) == (0, 0)
    await runner.stop()
    await other.stop()


async def test_stop_gives_work_its_grace_then_cancels_it_and_naks_for_redelivery(js):
    # A message whose work does not end within the stop's grace is cancelled and nak'ed: the next
    # runner on the durable gets it at once, as its second delivery, and settles it.
    cancelled = asyncio.Event()

    async def hang(payload, delivery):
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def done(payload, delivery):
        return Ack()

    runner = Recording(js, hang)
    await runner.start()
    await publish(js, "stuck")
    stop = asyncio.Event()
    looping = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + 10
    while not runner.seen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    stop.set()
    await looping
    await runner.stop(grace=0.2)
    assert cancelled.is_set()
    after = Recording(js, done)
    await after.start()
    await step_until(after, lambda: len(after.seen) == 1, timeout=5.0)
    assert [(i, d.count) for i, d in after.seen] == [("stuck", 2)]
    await settled(js)
    await after.stop()


async def test_group_commit_writes_what_is_submitted_together_in_one_group():
    # Items submitted at one moment are written in one call and each gets its own result; when a
    # write fails, every item of that group gets the error, and the next group is written again.
    groups: list[list[int]] = []
    fail = [True]

    async def write(items):
        groups.append(list(items))
        if len(groups) == 2 and fail:
            fail.clear()
            raise RuntimeError("database away")
        return [item * 10 for item in items]

    writer: GroupCommit[int, int] = GroupCommit(write)
    writer.start()
    assert await asyncio.gather(*(writer.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    failed = await asyncio.gather(writer.submit(7), writer.submit(8), return_exceptions=True)
    assert [str(e) for e in failed] == ["database away", "database away"]
    assert await writer.submit(9) == 90
    await writer.stop()
    assert groups == [[0, 1, 2, 3, 4], [7, 8], [9]]
