"""The sender-batches consumer: each SendBatch is delivered, committed, then ack / nak(delay) / term."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import socket
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from opentelemetry import trace

from services.common import bus
from services.common.log import get_logger
from services.common.runner import Ack, Decision, Delivery, Nak, Runner, Term
from services.common.verp import RecipientRef
from services.sender import retry
from services.sender.checks import GO, PAUSED, CampaignStates, SuppressionCheck
from services.sender.compose import Composer
from services.sender.mime import MessageProblem, Sender
from services.sender.render import CompiledContent, TemplateCache, TemplateProblem
from services.sender.smtp import (
    DEFERRED,
    EXPIRED,
    FINAL_STATUSES,
    DeliveryResult,
    SmtpDelivery,
    rejected,
    suppressed,
)
from services.sender.store import DeliveryStore, LedgerState, Outcome
from services.sender.writer import LedgerWriter

log = get_logger(__name__)
tracer = trace.get_tracer("services.sender")

DURABLE = "sender-batches"
ACK_WAIT_SECONDS = 60.0

_OUTCOMES = {
    "sent": events_pb2.DELIVERY_OUTCOME_SENT,
    "deferred": events_pb2.DELIVERY_OUTCOME_DEFERRED,
    "rejected": events_pb2.DELIVERY_OUTCOME_REJECTED,
    "expired": events_pb2.DELIVERY_OUTCOME_EXPIRED,
    "suppressed": events_pb2.DELIVERY_OUTCOME_SUPPRESSED,
}


def delivery_report(outcomes: Sequence[Outcome]) -> events_pb2.DeliveryReport:
    """The NATS report of a committed group of outcomes."""
    report = events_pb2.DeliveryReport()
    for o in outcomes:
        occurred = Timestamp()
        occurred.FromDatetime(o.occurred_at)
        report.events.append(
            events_pb2.DeliveryEvent(
                organization_id=o.organization_id,
                campaign_id=o.campaign_id,
                subscriber_id=o.subscriber_id,
                email=o.email,
                outcome=_OUTCOMES[o.status],
                smtp_code=o.smtp_code,
                smtp_message=o.smtp_message,
                enhanced_status=o.enhanced_status,
                tls=o.tls,
                message_id=o.message_id,
                attempt=o.attempt,
                occurred_at=occurred,
                message_key=o.message_key,
                category=o.category,
            )
        )
    return report


class SendBatchConsumer(Runner[events_pb2.SendBatch]):
    """Takes SendBatch messages off the shared durable consumer and works on several at once."""

    payload_type = events_pb2.SendBatch
    span_name = "send batch"

    def __init__(
        self,
        *,
        js: JetStreamContext,
        store: DeliveryStore,
        writer: LedgerWriter,
        composer: Composer,
        delivery: SmtpDelivery,
        concurrency: int,
        batches_in_flight: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
        give_up_seconds: float,
        ack_wait_seconds: float = ACK_WAIT_SECONDS,
        claim_seconds: float = 300.0,
        campaign_states: CampaignStates | None = None,
        suppression: SuppressionCheck | None = None,
        pause_recheck_seconds: float = 30.0,
        render_pool: Executor | None = None,
    ) -> None:
        super().__init__(
            js,
            stream=bus.STREAM_SEND,
            durable=DURABLE,
            subject=bus.SUBJECT_SEND_BATCH,
            slots=batches_in_flight,
            fetch=1,
            ack_wait=ack_wait_seconds,
            retry_delay=retry_base_seconds,
        )
        # Rendering and signing run off the event loop, so a heavy template never stalls the other
        # consumers (a password reset), the ledger writer or the SMTP sessions; None: the loop's default.
        self._render_pool = render_pool
        self._campaigns = campaign_states or CampaignStates(None)
        self._suppression = suppression or SuppressionCheck(None)
        self._pause_recheck = pause_recheck_seconds
        self._claim_seconds = claim_seconds
        # Claims are taken a delivery window ahead, so a kill leaves at most that many in doubt.
        self._claim_chunk = concurrency
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self._writer = writer
        self._composer = composer
        self._delivery = delivery
        self._templates = TemplateCache()
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._give_up = give_up_seconds
        self._delivery_slots = asyncio.Semaphore(concurrency)
        # Recipients being delivered by this process: a second copy of a batch waits for their outcome.
        self._inflight: dict[tuple[int, int], asyncio.Future[Outcome]] = {}

    def describe(self, batch: events_pb2.SendBatch, delivery: Delivery) -> dict:
        """The batch's campaign, number and size."""
        return {
            "mailblast.organization_id": batch.organization_id,
            "mailblast.campaign_id": batch.campaign_id,
            "mailblast.batch_number": batch.batch_number,
            "mailblast.recipients": len(batch.recipients),
        }

    async def dispose(self, batch: events_pb2.SendBatch, delivery: Delivery) -> Decision:
        """Deliver the batch's recipients not yet final; ack, retry the deferred later, or drop."""
        return await self._send(batch, delivery.count)

    def _halt(self, batch: events_pb2.SendBatch, verdict: str) -> Decision:
        """A paused campaign's batch comes back later, untouched; a cancelled one's is dropped."""
        log.info("batch halted by the campaign's state", campaign_id=batch.campaign_id, state=verdict)
        trace.get_current_span().set_attribute("mailblast.halted", verdict)
        if verdict == PAUSED:
            # A plain redelivery, not a retry: nothing is recorded, so no recipient spends an attempt.
            return Nak(self._pause_recheck)
        return Ack()

    async def _send(self, batch: events_pb2.SendBatch, delivery_count: int) -> Decision:
        campaign_id = batch.campaign_id
        verdict = await self._campaigns.verdict(batch.organization_id, campaign_id)
        if verdict != GO:
            return self._halt(batch, verdict)
        states = await self._store.states(campaign_id, {r.subscriber_id for r in batch.recipients})
        todo = []
        settled = []
        seen: set[int] = set()
        for recipient in batch.recipients:
            state = states.get(recipient.subscriber_id)
            if recipient.subscriber_id in seen:
                continue
            seen.add(recipient.subscriber_id)
            if state is not None and state.status in FINAL_STATUSES:
                if delivery_count > 1:
                    settled.append(_settled_outcome(batch, recipient.subscriber_id, state))
                continue
            todo.append(recipient)
        if settled:
            # A sender killed between its ledger commit and the report left these unreported: report
            # them again (the ledger keeps final rows as they are; the consumers take repeats in stride).
            await asyncio.gather(*(self._writer.submit(o) for o in settled))
        if not todo:
            return Ack()
        content = batch.content
        sender = Sender(content.from_name, content.from_address, content.reply_to)
        try:
            sender.check()
            compiled = await asyncio.get_running_loop().run_in_executor(
                self._render_pool,
                self._templates.get,
                campaign_id,
                content.subject,
                content.text_body,
                content.html_body,
            )
        except (MessageProblem, TemplateProblem) as exc:
            # The campaign itself cannot be sent: every recipient fails for the same reason, once.
            log.error("batch refused", campaign_id=campaign_id, reason=str(exc))
            result = rejected(str(exc))
            futures = [self._writer.submit(self._outcome(batch, r, result, "", states)) for r in todo]
            await asyncio.gather(*futures)
            return Term("the campaign cannot be sent: " + str(exc))

        waits: list[asyncio.Future[Outcome]] = []
        recorded: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        mine: list[events_pb2.BatchRecipient] = []
        for recipient in todo:
            shared = self._inflight.get((campaign_id, recipient.subscriber_id))
            if shared is not None:
                waits.append(shared)
            else:
                mine.append(recipient)
        busy = 0
        started: list[asyncio.Task[None]] = []
        # A claim names this very pass over the batch: a second copy of the batch in this same process
        # (redelivered while this one still works) must not take over recipients this one has not reached.
        owner = f"{self._owner}:{uuid.uuid4().hex[:8]}"
        halted = ""
        try:
            for start in range(0, len(mine), self._claim_chunk):
                chunk = mine[start : start + self._claim_chunk]
                if start:
                    # A long batch looks at the campaign again before each chunk (the answer is cached briefly).
                    verdict = await self._campaigns.verdict(batch.organization_id, campaign_id)
                    if verdict != GO:
                        halted = verdict
                        break
                # Asked before claiming, so a failed look-up leaves no claim behind to lapse.
                on_list = await self._suppression.suppressed(batch.organization_id, [r.email for r in chunk])
                # An erasure this sender heard of is final here even when lists cannot be asked.
                gone = await self._store.erased(batch.organization_id, [r.subscriber_id for r in chunk])
                claimed = await self._store.claim(
                    batch.organization_id,
                    campaign_id,
                    [(r.subscriber_id, r.email) for r in chunk],
                    owner,
                    self._claim_seconds,
                )
                for recipient in chunk:
                    key = (campaign_id, recipient.subscriber_id)
                    if recipient.subscriber_id not in claimed:
                        # Another sender is delivering it (or it became final meanwhile): look again later.
                        busy += 1
                        continue
                    if key in self._inflight:
                        waits.append(self._inflight[key])
                        continue
                    if recipient.email in on_list or recipient.subscriber_id in gone:
                        reason = on_list.get(recipient.email, "erased")
                        recorded.append(
                            self._writer.submit(self._outcome(batch, recipient, suppressed(reason), "", states))
                        )
                        continue
                    await self._delivery_slots.acquire()
                    future: asyncio.Future[Outcome] = loop.create_future()
                    self._inflight[key] = future
                    waits.append(future)
                    started.append(
                        asyncio.create_task(self._deliver_one(batch, recipient, compiled, sender, states, key, future))
                    )
        except asyncio.CancelledError:
            # Abandoned (the sender stops): a message cut off mid-SMTP may or may not have arrived.
            for task in started:
                task.cancel()
            raise
        except Exception:
            # Deliveries already started finish and record their outcomes before the batch is retried.
            await asyncio.gather(*waits, *recorded, return_exceptions=True)
            raise
        try:
            outcomes = await asyncio.gather(*waits)
        except asyncio.CancelledError:
            for task in started:
                task.cancel()
            raise
        await asyncio.gather(*recorded)
        if recorded:
            log.info("suppressed recipients not sent", campaign_id=campaign_id, count=len(recorded))
        if halted:
            # Whatever was under way has finished; the rest waits for a resume or is dropped.
            return self._halt(batch, halted)
        if busy:
            log.info("recipients claimed by another sender; batch returns later", campaign_id=campaign_id, busy=busy)

        still_deferred = [o for o in outcomes if o.status == DEFERRED]
        if not still_deferred:
            return Nak(self._retry_base) if busy else Ack()
        # The give-up clock and the backoff follow the recipients' own attempts, not the batch's age or
        # NATS's delivery count: time spent paused, or waiting behind other batches, costs no retries.
        now = dt.datetime.now(dt.UTC)
        firsts = [
            (states[o.subscriber_id].first_attempt_at if o.subscriber_id in states else None) or now
            for o in still_deferred
        ]
        age = max((now - min(firsts)).total_seconds(), 0.0)
        attempts = max(o.attempt for o in still_deferred)
        if retry.given_up(age, self._give_up):
            expiries = [
                self._writer.submit(replace(o, status=EXPIRED, counts_attempt=False, occurred_at=now))
                for o in still_deferred
            ]
            await asyncio.gather(*expiries)
            log.info("deferred recipients expired", campaign_id=campaign_id, count=len(expiries))
            return Nak(self._retry_base) if busy else Ack()
        delay = retry.next_retry_delay(attempts, age, self._retry_base, self._retry_max, self._give_up)
        return Nak(delay)

    def _outcome(
        self,
        batch: events_pb2.SendBatch,
        recipient: events_pb2.BatchRecipient,
        result: DeliveryResult,
        message_id: str,
        states: dict[int, LedgerState],
    ) -> Outcome:
        return Outcome.of(
            result,
            organization_id=batch.organization_id,
            campaign_id=batch.campaign_id,
            subscriber_id=recipient.subscriber_id,
            email=recipient.email,
            message_id=message_id,
            previous=states.get(recipient.subscriber_id),
        )

    async def _deliver_one(
        self,
        batch: events_pb2.SendBatch,
        recipient: events_pb2.BatchRecipient,
        compiled: CompiledContent,
        sender: Sender,
        states: dict[int, LedgerState],
        key: tuple[int, int],
        future: asyncio.Future[Outcome],
    ) -> None:
        released = False
        try:
            ref = RecipientRef(batch.organization_id, batch.campaign_id, recipient.subscriber_id)
            with tracer.start_as_current_span(
                "deliver",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "messaging.system": "nats",
                    "mailblast.organization_id": batch.organization_id,
                    "mailblast.campaign_id": batch.campaign_id,
                    "mailblast.subscriber_id": recipient.subscriber_id,
                },
            ) as span:
                message_id = ""
                try:
                    prepared = await asyncio.get_running_loop().run_in_executor(
                        self._render_pool,
                        functools.partial(
                            self._composer.prepare,
                            ref=ref,
                            content=compiled,
                            sender=sender,
                            email=recipient.email,
                            name=recipient.name,
                            attributes_json=recipient.attributes_json,
                        ),
                    )
                except (MessageProblem, TemplateProblem) as exc:
                    result = rejected(str(exc))
                else:
                    message_id = prepared.message_id
                    result = await self._delivery.deliver(prepared.envelope_from, recipient.email, prepared.data)
                span.set_attribute("smtp.reply_code", result.code)
                span.set_attribute("smtp.tls", result.tls)
                span.set_attribute("mailblast.outcome", result.outcome)
                if result.enhanced_status:
                    span.set_attribute("smtp.enhanced_status", result.enhanced_status)
            self._delivery_slots.release()
            released = True
            outcome = self._outcome(batch, recipient, result, message_id, states)
            await self._writer.submit(outcome)
            future.set_result(outcome)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("delivery cancelled"))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not released:
                self._delivery_slots.release()
            self._inflight.pop(key, None)


def _settled_outcome(batch: events_pb2.SendBatch, subscriber_id: int, state: LedgerState) -> Outcome:
    """The outcome a final ledger row records, to be reported again."""
    return Outcome(
        organization_id=batch.organization_id,
        campaign_id=batch.campaign_id,
        subscriber_id=subscriber_id,
        email=state.email,
        status=state.status,
        message_id=state.message_id,
        smtp_code=state.smtp_code,
        smtp_message=state.smtp_message,
        enhanced_status=state.enhanced_status,
        tls=state.tls,
        attempt=state.attempts,
        counts_attempt=False,
        occurred_at=state.updated_at or dt.datetime.now(dt.UTC),
    )
