"""The sender-transactional consumer: one message per key, delivered once, then ack / nak(delay) / term."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from concurrent.futures import Executor
from dataclasses import replace

from mailblast.v1 import events_pb2
from nats.js import JetStreamContext
from opentelemetry import trace

from services.common import bus
from services.common.log import get_logger
from services.common.runner import Ack, DeadLetter, Decision, Delivery, Nak, Runner, Term
from services.sender import retry
from services.sender.checks import SuppressionCheck
from services.sender.compose import Composer, Prepared
from services.sender.mime import MessageProblem, Sender
from services.sender.render import TemplateCache, TemplateProblem
from services.sender.smtp import (
    EXPIRED,
    FINAL_STATUSES,
    REJECTED,
    SENT,
    SUPPRESSED,
    DeliveryResult,
    SmtpDelivery,
    rejected,
    suppressed,
)
from services.sender.store import DeliveryStore, LedgerState, Outcome
from services.sender.writer import LedgerWriter

log = get_logger(__name__)
tracer = trace.get_tracer("services.sender")

DURABLE = "sender-transactional"
# Messages fetched at once; each is worked on by its own task.
FETCH = 16
# Categories delivered even to a suppressed address: account mail must always arrive, and a double
# opt-in confirmation is how a person who once unsubscribed subscribes again.
UNSUPPRESSED_PREFIXES = ("auth.", "lists.confirm")
# Mail about a subscription, which an erasure of its subscriber withdraws; other mail (account notices,
# test sends) to the same address still goes, its ledger row keeping only the keyed hash.
SUBSCRIBER_PREFIX = "lists."


def checks_suppression(category: str) -> bool:
    """Whether a transactional message of this category is withheld from suppressed addresses."""
    return not category.startswith(UNSUPPRESSED_PREFIXES)


class TransactionalConsumer(Runner[events_pb2.TransactionalMessage]):
    """Takes TransactionalMessage off its durable consumer; shares delivery, signing and ledger writer."""

    payload_type = events_pb2.TransactionalMessage
    span_name = "send transactional"

    def __init__(
        self,
        *,
        js: JetStreamContext,
        store: DeliveryStore,
        writer: LedgerWriter,
        composer: Composer,
        delivery: SmtpDelivery,
        concurrency: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
        give_up_seconds: float,
        ack_wait_seconds: float,
        suppression: SuppressionCheck | None = None,
        render_pool: Executor | None = None,
    ) -> None:
        super().__init__(
            js,
            stream=bus.STREAM_SEND,
            durable=DURABLE,
            subject=bus.SUBJECT_SEND_TRANSACTIONAL,
            slots=concurrency,
            fetch=FETCH,
            ack_wait=ack_wait_seconds,
            retry_delay=retry_base_seconds,
        )
        # Its own threads: a campaign's renders queued in the batch consumer's pool never delay this one's.
        self._render_pool = render_pool
        self._suppression = suppression or SuppressionCheck(None)
        self._store = store
        self._writer = writer
        self._composer = composer
        self._delivery = delivery
        self._templates = TemplateCache()
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._give_up = give_up_seconds
        # Keys being delivered by this process: a second copy arriving meanwhile leaves it to the first.
        self._inflight: set[tuple[int, str]] = set()

    def describe(self, message: events_pb2.TransactionalMessage, delivery: Delivery) -> dict:
        """The message's organisation, key and category."""
        return {
            "mailblast.organization_id": message.organization_id,
            "mailblast.message_key": message.message_key,
            "mailblast.category": message.category,
        }

    async def dispose(self, message: events_pb2.TransactionalMessage, delivery: Delivery) -> Decision:
        """Deliver the message once per key; a message that names no key or another organisation is kept aside."""
        if not message.message_key or message.organization_id <= 0:
            return DeadLetter("TransactionalMessage without message_key or organization_id")
        if bus.subject_organization(delivery.subject) != message.organization_id:
            # NATS lets a credential publish only its own organisation's subject; a payload naming
            # another organisation is an attempt to send as that one, and is never delivered.
            return DeadLetter(
                f"TransactionalMessage of organisation {message.organization_id} published to {delivery.subject}: "
                "the organisation must match the subject's"
            )
        return await self._send(message, delivery.count)

    async def _send(self, message: events_pb2.TransactionalMessage, delivery_count: int) -> Decision:
        span = trace.get_current_span()
        key = (message.organization_id, message.message_key)
        if key in self._inflight:
            # Another copy (re-published under another id) is being delivered here: it settles the key.
            return Ack()
        state = await self._store.transactional_state(*key)
        if state is not None and state.status in FINAL_STATUSES:
            return Ack()
        self._inflight.add(key)
        try:
            reason = await self._suppressed_reason(message)
            if reason is not None:
                span.set_attribute("mailblast.outcome", SUPPRESSED)
                await self._writer.submit(_outcome(message, state, suppressed(reason)))
                log.info("transactional message to a suppressed address not sent", message_key=message.message_key)
                return Ack()
            outcome = await self._deliver(message, state)
            span.set_attribute("smtp.reply_code", outcome.smtp_code)
            span.set_attribute("smtp.tls", outcome.tls)
            span.set_attribute("mailblast.outcome", outcome.status)
            await self._writer.submit(outcome)
        finally:
            self._inflight.discard(key)
        if outcome.status == SENT:
            return Ack()
        if outcome.status == REJECTED:
            return Term("refused for good: " + outcome.smtp_message)
        age = _age_seconds(message)
        if retry.given_up(age, self._give_up):
            now = dt.datetime.now(dt.UTC)
            await self._writer.submit(replace(outcome, status=EXPIRED, counts_attempt=False, occurred_at=now))
            log.info("transactional message expired", message_key=message.message_key)
            return Ack()
        return Nak(retry.next_retry_delay(delivery_count, age, self._retry_base, self._retry_max, self._give_up))

    async def _suppressed_reason(self, message: events_pb2.TransactionalMessage) -> str | None:
        if message.category.startswith(SUBSCRIBER_PREFIX) and await self._store.erased_since(
            message.organization_id, message.to_address, _created_at(message)
        ):
            # Asked for before its subscriber was erased (a confirmation whose consent is gone): never sent.
            return "erased"
        if not checks_suppression(message.category):
            return None
        found = await self._suppression.suppressed(message.organization_id, [message.to_address])
        return found.get(message.to_address)

    async def _deliver(self, message: events_pb2.TransactionalMessage, state: LedgerState | None) -> Outcome:
        content = message.content
        sender = Sender(content.from_name, content.from_address, content.reply_to)
        message_id = ""
        try:
            sender.check()
            prepared = await asyncio.get_running_loop().run_in_executor(
                self._render_pool, functools.partial(self._prepare, message, sender)
            )
        except (MessageProblem, TemplateProblem) as exc:
            log.error("transactional message refused", message_key=message.message_key, reason=str(exc))
            result = rejected(str(exc))
        else:
            message_id = prepared.message_id
            result = await self._delivery.deliver(prepared.envelope_from, message.to_address, prepared.data)
        return _outcome(message, state, result, message_id)

    def _prepare(self, message: events_pb2.TransactionalMessage, sender: Sender) -> Prepared:
        """Compile (cached), render and sign one message; runs in a render thread."""
        content = message.content
        # Keyed by content hash: transactional templates repeat (one per kind of notice).
        compiled = self._templates.get(0, content.subject, content.text_body, content.html_body)
        return self._composer.prepare_transactional(
            organization_id=message.organization_id,
            message_key=message.message_key,
            category=message.category,
            content=compiled,
            sender=sender,
            email=message.to_address,
            name=message.to_name,
            variables_json=message.variables_json,
        )


def _outcome(
    message: events_pb2.TransactionalMessage, state: LedgerState | None, result: DeliveryResult, message_id: str = ""
) -> Outcome:
    """The ledger outcome of one transactional message."""
    outcome = Outcome.of(
        result,
        organization_id=message.organization_id,
        email=message.to_address,
        previous=state,
        message_id=message_id,
        message_key=message.message_key,
        category=message.category,
    )
    return replace(outcome, message_created_at=_created_at(message))


def _created_at(message: events_pb2.TransactionalMessage) -> dt.datetime | None:
    return message.created_at.ToDatetime(tzinfo=dt.UTC) if message.HasField("created_at") else None


def _age_seconds(message: events_pb2.TransactionalMessage) -> float:
    if not message.HasField("created_at"):
        return 0.0
    created = message.created_at.seconds + message.created_at.nanos / 1e9
    return max(0.0, time.time() - created)
