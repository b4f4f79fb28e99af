"""Delivering one campaign batch: look, claim, deliver, record, decide, with the collaborators handed in.

The decisions are pure functions (decisions.py); this module carries them out, several deliveries at
once. It imports no transport: the batch comes as plain values (convert.py makes them from the
SendBatch), the ledger, the campaign gate and SMTP are the narrow interfaces of collaborators.py.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from opentelemetry import trace

from services.common.clock import Clock, SystemClock
from services.common.decision import Ack, Decision, Term
from services.common.log import get_logger
from services.common.verp import RecipientRef
from services.sender import decisions
from services.sender.collaborators import CampaignGate, Ledger, Recorder, Transport
from services.sender.compose import Composer, Prepared
from services.sender.decisions import RetryPolicy, Step, Verdict
from services.sender.ledger import DeliveryResult, LedgerState, Outcome, rejected, suppressed
from services.sender.mime import MessageProblem, Sender
from services.sender.render import CompiledContent, TemplateCache, TemplateProblem
from services.sender.signing import Signing, SigningKeys

log = get_logger(__name__)
tracer = trace.get_tracer("services.sender")

# The most messages built per hand-over to the render thread.
_GROUP = 16


@dataclass(frozen=True)
class Content:
    """What a campaign (or a transactional message) says, before personal fields are filled in."""

    from_name: str
    from_address: str
    reply_to: str
    subject: str
    html_body: str
    text_body: str

    @functools.cached_property
    def sender(self) -> Sender:
        """The From and Reply-To of the message (one Sender, so its encoded From is computed once)."""
        return Sender(self.from_name, self.from_address, self.reply_to)


@dataclass(frozen=True)
class Recipient:
    """One recipient of a batch."""

    subscriber_id: int
    email: str
    name: str
    attributes_json: str


@dataclass(frozen=True)
class Batch:
    """A unit of a campaign's send work."""

    organization_id: int
    campaign_id: int
    batch_number: int
    content: Content
    recipients: Sequence[Recipient]
    # Rewrite links and add the open pixel (the campaign and its organisation both measure).
    tracking: bool = False


def owner_name() -> str:
    """This process's name in the claims it takes (host, pid and a random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class BatchSending:
    """Delivers campaign batches, at most `concurrency` messages at once for the whole process."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        recorder: Recorder,
        gate: CampaignGate,
        transport: Transport,
        composer: Composer,
        policy: RetryPolicy,
        concurrency: int,
        claim_seconds: float = 20.0,
        clock: Clock | None = None,
        render_pool: Executor | None = None,
        signing: SigningKeys | None = None,
    ) -> None:
        self._ledger = ledger
        self._recorder = recorder
        self._gate = gate
        # None: every message signed with the composer's (platform) keys.
        self._signing = signing
        self._transport = transport
        self._composer = composer
        self._policy = policy
        self._clock = clock or SystemClock()
        # Rendering and signing run off the event loop, so a heavy template never stalls the other
        # consumers (a password reset), the ledger writer or the SMTP sessions; None: the loop's default.
        self._render_pool = render_pool
        self._claim_seconds = claim_seconds
        # Claims are taken a delivery window ahead, so a kill leaves at most that many in doubt.
        self._claim_chunk = concurrency
        self._owner = owner_name()
        self._templates = TemplateCache()
        self._slots = asyncio.Semaphore(concurrency)
        # Recipients being delivered by this process: a second copy of a batch waits for their outcome.
        self._inflight: dict[tuple[int, int], asyncio.Future[Outcome]] = {}

    async def send(self, batch: Batch, delivery_count: int) -> Decision:
        """Deliver the batch's recipients not yet final; ack, retry the deferred later, or drop."""
        verdict = await self._gate.verdict(batch.organization_id, batch.campaign_id)
        if verdict != Verdict.GO:
            return self._halt(batch, verdict)
        states = await self._ledger.states(batch.campaign_id, list({r.subscriber_id for r in batch.recipients}))
        plan = decisions.plan_batch(batch.recipients, states, delivery_count)
        if plan.report_again:
            now = self._clock.now()
            again = [
                decisions.report_again(batch.organization_id, batch.campaign_id, r.subscriber_id, state, now)
                for r, state in plan.report_again
            ]
            await asyncio.gather(*(self._recorder.submit(o) for o in again))
        if not plan.todo:
            return Ack()
        try:
            batch.content.sender.check()
            signing = (
                await self._signing.for_sender(batch.organization_id, batch.content.from_address)
                if self._signing
                else None
            )
            compiled = await asyncio.get_running_loop().run_in_executor(
                self._render_pool, self._templates.get, batch.campaign_id, batch.content.subject,
                batch.content.text_body, batch.content.html_body,
            )  # fmt: skip
        except (MessageProblem, TemplateProblem) as exc:
            # The campaign itself cannot be sent: every recipient fails for the same reason, once.
            log.error("batch refused", campaign_id=batch.campaign_id, reason=str(exc))
            result = rejected(str(exc))
            await asyncio.gather(
                *(self._recorder.submit(self._outcome(batch, r, result, "", states)) for r in plan.todo)
            )
            return Term(f"the campaign cannot be sent: {exc}")
        return await self._deliver_all(batch, plan.todo, compiled, states, signing)

    def _halt(self, batch: Batch, verdict: Verdict) -> Decision:
        log.info("batch halted by the campaign's state", campaign_id=batch.campaign_id, state=verdict)
        trace.get_current_span().set_attribute("mailblast.halted", str(verdict))
        return decisions.halt(verdict, self._policy)

    async def _deliver_all(
        self,
        batch: Batch,
        todo: list[Recipient],
        compiled: CompiledContent,
        states: dict[int, LedgerState],
        signing: Signing | None = None,
    ) -> Decision:
        waits: list[asyncio.Future[Outcome]] = []
        recorded: list[asyncio.Future[object]] = []
        started: list[asyncio.Task[None]] = []
        mine: list[Recipient] = []
        for recipient in todo:
            shared = self._inflight.get((batch.campaign_id, recipient.subscriber_id))
            if shared is not None:
                waits.append(shared)
            else:
                mine.append(recipient)
        busy = 0
        # A claim names this very pass over the batch: a second copy of the batch in this same process
        # (redelivered while this one still works) must not take over recipients this one has not reached.
        owner = f"{self._owner}:{uuid.uuid4().hex[:8]}"
        halted: Verdict | None = None
        renewing = asyncio.create_task(self._renew_claims(batch.campaign_id, owner))
        try:
            for start in range(0, len(mine), self._claim_chunk):
                chunk = mine[start : start + self._claim_chunk]
                # One look at the ledger, the campaign's state and the suppression list for the chunk.
                claim = await self._ledger.claim(
                    batch.organization_id, batch.campaign_id, [(r.subscriber_id, r.email) for r in chunk],
                    owner, self._claim_seconds,
                )  # fmt: skip
                if claim.verdict != Verdict.GO:
                    halted = claim.verdict
                    break
                deliver: list[Recipient] = []
                for recipient in chunk:
                    key = (batch.campaign_id, recipient.subscriber_id)
                    step = decisions.step_for(
                        recipient.subscriber_id, claim.claimed, key in self._inflight, claim.withheld
                    )
                    if step == Step.BUSY:
                        busy += 1
                    elif step == Step.JOIN:
                        waits.append(self._inflight[key])
                    elif step == Step.WITHHOLD:
                        result = suppressed(claim.withheld[recipient.subscriber_id])
                        recorded.append(self._recorder.submit(self._outcome(batch, recipient, result, "", states)))
                    else:
                        deliver.append(recipient)
                # Messages are built in groups, one hand-over to the render thread each: per message, the
                # hand-over (executor future, its chaining into the loop, the wake-up) cost more than rendering.
                # The groups grow 1, 2, 4, 8, 16, so the first message leaves as soon as it is signed.
                loop = asyncio.get_running_loop()
                places: list[tuple[asyncio.Future[list[Prepared | MessageProblem | TemplateProblem]], int]] = []
                at, size = 0, 1
                while at < len(deliver):
                    group = loop.run_in_executor(
                        self._render_pool, self._prepare_group, batch, compiled, deliver[at : at + size], signing
                    )
                    places += [(group, index) for index in range(len(deliver[at : at + size]))]
                    at, size = at + size, min(size * 2, _GROUP)
                for index, recipient in enumerate(deliver):
                    key = (batch.campaign_id, recipient.subscriber_id)
                    await self._slots.acquire()
                    future: asyncio.Future[Outcome] = loop.create_future()
                    self._inflight[key] = future
                    waits.append(future)
                    prepared = places[index]
                    started.append(
                        asyncio.create_task(self._deliver_one(batch, recipient, prepared, states, key, future))
                    )
            outcomes = await asyncio.gather(*waits)
        except asyncio.CancelledError:
            # Abandoned (the sender stops): a message cut off mid-SMTP may or may not have arrived.
            for task in started:
                task.cancel()
            raise
        except Exception:
            # Deliveries already started finish and record their outcomes before the batch is retried.
            await asyncio.gather(*waits, *recorded, return_exceptions=True)
            raise
        finally:
            renewing.cancel()
        await asyncio.gather(*recorded)
        if recorded:
            log.info("suppressed recipients not sent", campaign_id=batch.campaign_id, count=len(recorded))
        if halted is not None:
            # Whatever was under way has finished; the rest waits for a resume or is dropped.
            return self._halt(batch, halted)
        if busy:
            log.info(
                "recipients claimed by another sender; batch returns later", campaign_id=batch.campaign_id, busy=busy
            )
        firsts = {
            o.subscriber_id: states[o.subscriber_id].first_attempt_at for o in outcomes if o.subscriber_id in states
        }
        settlement = decisions.settle_batch(outcomes, firsts, busy, self._clock.now(), self._policy)
        if settlement.expiries:
            await asyncio.gather(*(self._recorder.submit(o) for o in settlement.expiries))
            log.info("deferred recipients expired", campaign_id=batch.campaign_id, count=len(settlement.expiries))
        return settlement.decision

    async def _renew_claims(self, campaign_id: int, owner: str) -> None:
        """Renew this pass's claims every third of the lease while it delivers (a slow server keeps its own)."""
        while True:
            await asyncio.sleep(self._claim_seconds / 3)
            try:
                await self._ledger.renew(campaign_id, owner, self._claim_seconds)
            except Exception:
                # The next renewal tries again; a claim that lapses meanwhile is at worst delivered twice.
                log.warning("could not renew claims", campaign_id=campaign_id, exc_info=True)

    def _outcome(
        self,
        batch: Batch,
        recipient: Recipient,
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
            occurred_at=self._clock.now(),
        )

    def _prepare_group(
        self,
        batch: Batch,
        compiled: CompiledContent,
        recipients: Sequence[Recipient],
        signing: Signing | None = None,
    ) -> list[Prepared | MessageProblem | TemplateProblem]:
        """Build and sign each recipient's message (in the render thread); a refusal stands in for its message."""
        built: list[Prepared | MessageProblem | TemplateProblem] = []
        sender = batch.content.sender
        for recipient in recipients:
            try:
                built.append(
                    self._composer.prepare(
                        ref=RecipientRef(batch.organization_id, batch.campaign_id, recipient.subscriber_id),
                        content=compiled,
                        sender=sender,
                        email=recipient.email,
                        name=recipient.name,
                        attributes_json=recipient.attributes_json,
                        signing=signing,
                        tracking=batch.tracking,
                    )
                )
            except (MessageProblem, TemplateProblem) as exc:
                built.append(exc)
        return built

    async def _deliver_one(
        self,
        batch: Batch,
        recipient: Recipient,
        prepared: tuple[asyncio.Future[list[Prepared | MessageProblem | TemplateProblem]], int],
        states: dict[int, LedgerState],
        key: tuple[int, int],
        future: asyncio.Future[Outcome],
    ) -> None:
        released = False
        try:
            group, index = prepared
            message = (await group)[index]
            message_id = ""
            if isinstance(message, Exception):
                result = rejected(str(message))
            else:
                message_id = message.message_id
                # A span per delivery only under a batch span that is recorded (sampled): otherwise it
                # was the costliest part of the loop's work per message, for nobody.
                if trace.get_current_span().is_recording():
                    result = await self._traced_delivery(batch, recipient, message)
                else:
                    result = await self._transport.deliver(message.envelope_from, recipient.email, message.data)
            self._slots.release()
            released = True
            outcome = self._outcome(batch, recipient, result, message_id, states)
            await self._recorder.submit(outcome)
            future.set_result(outcome)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("delivery cancelled"))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if not released:
                self._slots.release()
            self._inflight.pop(key, None)

    async def _traced_delivery(self, batch: Batch, recipient: Recipient, message: Prepared) -> DeliveryResult:
        attributes = {
            "mailblast.organization_id": batch.organization_id,
            "mailblast.campaign_id": batch.campaign_id,
            "mailblast.subscriber_id": recipient.subscriber_id,
        }
        with tracer.start_as_current_span("deliver", kind=trace.SpanKind.CLIENT, attributes=attributes) as span:
            result = await self._transport.deliver(message.envelope_from, recipient.email, message.data)
            span.set_attribute("smtp.reply_code", result.code)
            span.set_attribute("smtp.tls", result.tls)
            span.set_attribute("mailblast.outcome", str(result.status))
            if result.enhanced_status:
                span.set_attribute("smtp.enhanced_status", result.enhanced_status)
        return result
