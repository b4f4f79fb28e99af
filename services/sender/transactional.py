"""Delivering one transactional message (a password reset, an opt-in confirmation): once per key.

Like sending.py for batches: the decisions are pure functions (decisions.py), the collaborators the
narrow interfaces of collaborators.py, the message plain values (convert.py makes them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from concurrent.futures import Executor
from dataclasses import dataclass

from opentelemetry import trace

from services.common.clock import Clock, SystemClock
from services.common.decision import Ack, Decision
from services.common.log import get_logger
from services.sender import decisions
from services.sender.collaborators import Ledger, Recorder, SuppressionList, Transport
from services.sender.compose import Composer, Prepared
from services.sender.decisions import RetryPolicy
from services.sender.ledger import DeliveryResult, LedgerState, Outcome, rejected, suppressed
from services.sender.mime import MessageProblem
from services.sender.render import TemplateCache, TemplateProblem
from services.sender.sending import Content

log = get_logger(__name__)


@dataclass(frozen=True)
class Message:
    """One transactional message to one address, identified by its organisation and key."""

    organization_id: int
    message_key: str
    to_address: str
    to_name: str
    content: Content
    variables_json: str
    category: str
    # When it was asked for; None when the publisher did not say.
    created_at: dt.datetime | None = None
    # Published by the platform's own services (only they may on that subject), not by an application.
    platform: bool = False


class TransactionalSending:
    """Delivers transactional messages; shares the transport, the composer and the recorder with batches."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        recorder: Recorder,
        suppressions: SuppressionList,
        transport: Transport,
        composer: Composer,
        policy: RetryPolicy,
        clock: Clock | None = None,
        render_pool: Executor | None = None,
    ) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._suppressions = suppressions
        self._transport = transport
        self._composer = composer
        self._policy = policy
        self._clock = clock or SystemClock()
        # Its own threads: a campaign's renders queued in the batch pool never delay this one's.
        self._render_pool = render_pool
        self._templates = TemplateCache()
        # Keys being delivered by this process: a second copy arriving meanwhile leaves it to the first.
        self._inflight: set[tuple[int, str]] = set()

    async def send(self, message: Message, delivery_count: int) -> Decision:
        """Deliver the message unless it is done or withheld; ack, retry later, expire or drop."""
        span = trace.get_current_span()
        key = (message.organization_id, message.message_key)
        if key in self._inflight:
            # Another copy (re-published under another id) is being delivered here: it settles the key.
            return Ack()
        state = await self._ledger.transactional_state(*key)
        if state is not None and state.status.final:
            return Ack()
        self._inflight.add(key)
        try:
            reason = await self._withheld_reason(message)
            if reason is not None:
                span.set_attribute("mailblast.outcome", "suppressed")
                await self._recorder.submit(self._outcome(message, state, suppressed(reason)))
                log.info("transactional message to a suppressed address not sent", message_key=message.message_key)
                return Ack()
            outcome = await self._deliver(message, state)
            span.set_attribute("smtp.reply_code", outcome.smtp_code)
            span.set_attribute("smtp.tls", outcome.tls)
            span.set_attribute("mailblast.outcome", str(outcome.status))
            await self._recorder.submit(outcome)
        finally:
            self._inflight.discard(key)
        now = self._clock.now()
        age = max(0.0, (now - message.created_at).total_seconds()) if message.created_at else 0.0
        settlement = decisions.settle_transactional(outcome, age, delivery_count, now, self._policy)
        for expired in settlement.expiries:
            await self._recorder.submit(expired)
            log.info("transactional message expired", message_key=message.message_key)
        return settlement.decision

    async def _withheld_reason(self, message: Message) -> str | None:
        erased = decisions.withdrawn_by_erasure(message.category) and await self._ledger.erased_since(
            message.organization_id, message.to_address, message.created_at
        )
        found = None
        if not erased and decisions.checks_suppression(message.category, message.platform):
            listed = await self._suppressions.suppressed(message.organization_id, [message.to_address])
            found = listed.get(message.to_address)
        return decisions.withheld_reason(message.category, erased, found, message.platform)

    async def _deliver(self, message: Message, state: LedgerState | None) -> Outcome:
        message_id = ""
        try:
            message.content.sender.check()
            prepared = await asyncio.get_running_loop().run_in_executor(
                self._render_pool, functools.partial(self._prepare, message)
            )
        except (MessageProblem, TemplateProblem) as exc:
            log.error("transactional message refused", message_key=message.message_key, reason=str(exc))
            result = rejected(str(exc))
        else:
            message_id = prepared.message_id
            result = await self._transport.deliver(prepared.envelope_from, message.to_address, prepared.data)
        return self._outcome(message, state, result, message_id)

    def _prepare(self, message: Message) -> Prepared:
        """Compile (cached), render and sign one message; runs in a render thread."""
        content = message.content
        # Keyed by content hash: transactional templates repeat (one per kind of notice).
        compiled = self._templates.get(0, content.subject, content.text_body, content.html_body)
        return self._composer.prepare_transactional(
            organization_id=message.organization_id,
            message_key=message.message_key,
            category=message.category,
            content=compiled,
            sender=content.sender,
            email=message.to_address,
            name=message.to_name,
            variables_json=message.variables_json,
        )

    def _outcome(
        self, message: Message, state: LedgerState | None, result: DeliveryResult, message_id: str = ""
    ) -> Outcome:
        """The ledger outcome of one transactional message."""
        return Outcome.of(
            result,
            organization_id=message.organization_id,
            email=message.to_address,
            previous=state,
            occurred_at=self._clock.now(),
            message_id=message_id,
            message_key=message.message_key,
            category=message.category,
            message_created_at=message.created_at,
        )
