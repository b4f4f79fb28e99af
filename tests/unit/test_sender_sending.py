"""The batch and transactional send paths with in-memory collaborators: no NATS, SMTP or PostgreSQL.

The ledger, the campaign gate, the suppression list and the transport are the narrow interfaces of
services/sender/collaborators.py; here they are small in-memory ones that record what they are asked.
The real ones are exercised by tests/integration/test_sender.py and the system tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import email
import email.policy
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import replace

from services.common.decision import Ack, Nak, Term
from services.sender.collaborators import Claim
from services.sender.compose import Composer
from services.sender.decisions import RetryPolicy, Verdict, verdict_of
from services.sender.dkim import DkimSigner
from services.sender.ledger import DeliveryResult, DeliveryStatus, LedgerState, Outcome, reply_result
from services.sender.sending import Batch, BatchSending, Content, Recipient
from services.sender.transactional import Message, TransactionalSending
from tests.support.clock import MovableClock

POLICY = RetryPolicy(base_seconds=60, max_seconds=3600, give_up_seconds=3600, pause_recheck_seconds=30)
CONTENT = Content("ショップ", "news@shop.example.com", "", "{{ name }}様へ", "<p>{{ name }}</p>", "{{ name }}")


class MemoryLedger:
    """The Ledger, the CampaignGate, the SuppressionList and the Recorder over dictionaries."""

    def __init__(self, clock: MovableClock) -> None:
        self.clock = clock
        self.rows: dict[tuple[int, int], LedgerState] = {}
        self.transactional: dict[tuple[int, str], LedgerState] = {}
        self.owners: dict[tuple[int, int], str] = {}
        self.campaign_states: dict[int, str] = {}
        self.suppressions: dict[str, str] = {}
        self.erased: set[int] = set()
        self.erased_addresses: dict[str, dt.datetime] = {}
        self.claims: list[list[int]] = []
        self.renewals: list[tuple[int, str]] = []
        self.recorded: list[Outcome] = []

    async def verdict(self, organization_id: int, campaign_id: int) -> Verdict:
        """The campaign's verdict by its state here."""
        return verdict_of(self.campaign_states.get(campaign_id))

    async def suppressed(self, organization_id: int, emails: Sequence[str]) -> dict[str, str]:
        """The suppressed ones among the addresses."""
        return {e: self.suppressions[e] for e in emails if e in self.suppressions}

    async def states(self, campaign_id: int, subscriber_ids: Sequence[int]) -> dict[int, LedgerState]:
        """The rows of those recipients."""
        return {i: self.rows[(campaign_id, i)] for i in subscriber_ids if (campaign_id, i) in self.rows}

    async def renew(self, campaign_id: int, owner: str, lease: float) -> int:
        """Record a renewal of an owner's claims."""
        self.renewals.append((campaign_id, owner))
        return sum(1 for (c, _), o in self.owners.items() if c == campaign_id and o == owner)

    async def claim(self, organization_id, campaign_id, recipients, owner, lease) -> Claim:
        """Claim what is new, deferred or ours, unless the campaign is halted; name the withheld."""
        verdict = verdict_of(self.campaign_states.get(campaign_id))
        if verdict != Verdict.GO:
            return Claim(frozenset(), {}, verdict)
        self.claims.append([i for i, _ in recipients])
        claimed = set()
        for subscriber_id, _ in recipients:
            key = (campaign_id, subscriber_id)
            row = self.rows.get(key)
            if row is not None and row.status.final:
                continue
            if self.owners.get(key, owner) != owner:
                continue
            self.owners[key] = owner
            self.rows.setdefault(key, LedgerState(DeliveryStatus.CLAIMED, 0, first_attempt_at=self.clock.now()))
            claimed.add(subscriber_id)
        withheld = {i: "erased" for i in claimed if i in self.erased}
        withheld |= {i: self.suppressions[e] for i, e in recipients if i in claimed and e in self.suppressions}
        return Claim(frozenset(claimed), withheld, verdict)

    async def transactional_state(self, organization_id: int, message_key: str) -> LedgerState | None:
        """The row of one transactional message."""
        return self.transactional.get((organization_id, message_key))

    async def erased_since(self, organization_id: int, email: str, asked_at: dt.datetime | None) -> bool:
        """Whether the address was erased at or after `asked_at`."""
        erased_at = self.erased_addresses.get(email)
        return erased_at is not None and (asked_at is None or asked_at <= erased_at)

    def submit(self, outcome: Outcome) -> asyncio.Future[Outcome]:
        """Record at once (a final row is never overwritten), as the ledger writer does."""
        self.recorded.append(outcome)
        rows = self.transactional if outcome.message_key else self.rows
        key = (outcome.organization_id, outcome.message_key) if outcome.message_key else (
            outcome.campaign_id, outcome.subscriber_id
        )  # fmt: skip
        before = rows.get(key)
        if before is None or not before.status.final:
            first = before.first_attempt_at if before and before.first_attempt_at else outcome.occurred_at
            attempts = (before.attempts if before else 0) + (1 if outcome.counts_attempt else 0)
            rows[key] = LedgerState(
                outcome.status, attempts, outcome.email, outcome.message_id, outcome.smtp_code, outcome.smtp_message,
                updated_at=outcome.occurred_at, first_attempt_at=first,
            )  # fmt: skip
        self.owners.pop(key, None)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.set_result(outcome)
        return future

    def statuses(self, campaign_id: int) -> dict[int, DeliveryStatus]:
        """Each recipient's status in the ledger."""
        return {i: row.status for (c, i), row in self.rows.items() if c == campaign_id}


class RecordingTransport:
    """An SMTP stand-in that keeps every message offered and answers as `reply(address, seen)` says."""

    def __init__(self, reply: Callable[[str, int], DeliveryResult | None] | None = None) -> None:
        self.offered: list[tuple[str, str, bytes]] = []
        self.reply = reply or (lambda address, seen: None)
        self.gate: asyncio.Event | None = None
        self._offers = asyncio.Condition()

    async def offered_at_least(self, count: int) -> None:
        """Wait until `count` messages have been offered."""
        async with self._offers:
            await self._offers.wait_for(lambda: len(self.offered) >= count)

    async def deliver(self, envelope_from: str, recipient: str, message: bytes) -> DeliveryResult:
        """Keep the message; answer 250 unless told otherwise."""
        seen = sum(1 for _, r, _ in self.offered if r == recipient)
        self.offered.append((envelope_from, recipient, message))
        async with self._offers:
            self._offers.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        return self.reply(recipient, seen) or reply_result(250, "2.0.0 queued", True)

    def recipients(self) -> list[str]:
        """Who was offered a message, in order."""
        return [r for _, r, _ in self.offered]


def composer() -> Composer:
    """A composer without DKIM keys."""
    return Composer(
        key=b"k" * 32, return_path_domain="bounces.example.com", message_id_domain="mail.example.com",
        unsubscribe_url="https://mail.example.com/u/", signer=DkimSigner([]),
    )  # fmt: skip


class InlineExecutor(Executor):
    """Renders on the calling thread, so a test knows when a render is done."""

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        """Run fn now."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def batch_sending(
    ledger: MemoryLedger, transport: RecordingTransport, concurrency: int = 8, render_pool: Executor | None = None
) -> BatchSending:
    """The batch path over the in-memory collaborators."""
    return BatchSending(
        ledger=ledger, recorder=ledger, gate=ledger, transport=transport, composer=composer(), policy=POLICY,
        concurrency=concurrency, clock=ledger.clock, render_pool=render_pool,
    )  # fmt: skip


def batch(*people: int, campaign_id: int = 2, content: Content = CONTENT) -> Batch:
    """A batch of campaign 2 with these subscribers (p<id>@example.net)."""
    recipients = [Recipient(i, f"p{i}@example.net", f"P{i}", "{}") for i in people]
    return Batch(1, campaign_id, 1, content, recipients)


async def test_a_batch_is_delivered_once_per_recipient_personalised_and_acked():
    # Three recipients (one listed twice) are each offered one personalised message; the ledger holds
    # them as sent with one attempt, and the batch is acked.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    decision = await batch_sending(ledger, transport).send(batch(1, 2, 1, 3), 1)
    assert decision == Ack()
    assert sorted(transport.recipients()) == ["p1@example.net", "p2@example.net", "p3@example.net"]
    subjects = {
        r: str(email.message_from_bytes(m, policy=email.policy.default)["Subject"]) for _, r, m in transport.offered
    }
    assert subjects["p2@example.net"] == "P2様へ"
    assert ledger.statuses(2) == {1: DeliveryStatus.SENT, 2: DeliveryStatus.SENT, 3: DeliveryStatus.SENT}
    assert all(row.attempts == 1 for row in ledger.rows.values())


async def test_a_sender_renews_its_claims_while_a_slow_server_holds_its_deliveries():
    # A mail server that takes longer than the lease: the sender renews its pass's claims every third of
    # the lease while the delivery is under way (so the lease can be short and a killed sender's recipients
    # lapse soon), and stops renewing once the batch is done.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    transport.gate = asyncio.Event()
    sending = BatchSending(
        ledger=ledger, recorder=ledger, gate=ledger, transport=transport, composer=composer(), policy=POLICY,
        concurrency=8, clock=ledger.clock, claim_seconds=0.03,
    )  # fmt: skip
    renewed_twice = asyncio.Event()
    record = ledger.renew

    async def renew(campaign_id: int, owner: str, lease: float) -> int:
        held = await record(campaign_id, owner, lease)
        if len(ledger.renewals) >= 2:
            renewed_twice.set()
        return held

    ledger.renew = renew
    task = asyncio.create_task(sending.send(batch(1, 2), 1))
    await transport.offered_at_least(2)
    await asyncio.wait_for(renewed_twice.wait(), 10)
    [owner] = {o for _, o in ledger.renewals}
    assert ledger.renewals[0] == (2, owner) and set(ledger.owners.values()) == {owner}
    transport.gate.set()
    assert await task == Ack()
    done = len(ledger.renewals)
    await asyncio.sleep(0.05)
    assert len(ledger.renewals) == done


async def test_a_paused_campaign_is_looked_at_again_later_without_a_claim_or_an_offer():
    # The gate says paused before anything is done: no ledger claim, no message, the batch comes back
    # after the recheck delay; cancelled: the batch is dropped the same way.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    sending = batch_sending(ledger, transport)
    ledger.campaign_states[2] = "paused"
    assert await sending.send(batch(1, 2), 1) == Nak(30)
    ledger.campaign_states[2] = "cancelled"
    assert await sending.send(batch(1, 2), 1) == Ack()
    assert (ledger.claims, transport.offered, ledger.recorded) == ([], [], [])


async def test_a_pause_between_chunks_stops_the_batch_after_what_was_under_way():
    # Claims go one delivery window (2) at a time, one window ahead of the deliveries; the campaign is
    # paused while the first window is being delivered and the second already claimed: those four are
    # delivered and recorded, the fifth is never offered, and the batch comes back after the recheck.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    transport.gate = asyncio.Event()
    sending = asyncio.create_task(batch_sending(ledger, transport, concurrency=2).send(batch(1, 2, 3, 4, 5), 1))
    await transport.offered_at_least(2)
    ledger.campaign_states[2] = "paused"
    transport.gate.set()
    assert await sending == Nak(30)
    assert sorted(transport.recipients()) == [f"p{i}@example.net" for i in (1, 2, 3, 4)]
    assert [ledger.statuses(2).get(i) for i in (1, 2, 3, 4, 5)] == [DeliveryStatus.SENT] * 4 + [None]


async def test_suppressed_and_erased_recipients_are_withheld_and_recorded_as_suppressed():
    # One recipient is on the suppression list and one was erased: neither is offered anything; both are
    # recorded as suppressed with the reason and no attempt; the others are delivered; the batch is acked.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    ledger.suppressions["p2@example.net"] = "unsubscribed"
    ledger.erased.add(3)
    assert await batch_sending(ledger, transport).send(batch(1, 2, 3, 4), 1) == Ack()
    assert sorted(transport.recipients()) == ["p1@example.net", "p4@example.net"]
    withheld = {
        o.subscriber_id: (o.status, o.smtp_message, o.counts_attempt)
        for o in ledger.recorded
        if o.subscriber_id in (2, 3)
    }
    assert withheld == {
        2: (DeliveryStatus.SUPPRESSED, "suppressed: unsubscribed", False),
        3: (DeliveryStatus.SUPPRESSED, "suppressed: erased", False),
    }


async def test_recipients_another_sender_holds_are_left_to_it_and_the_batch_returns():
    # Another sender's claim on one recipient has not lapsed: this one delivers the rest and brings the
    # batch back after the base delay, without offering that recipient anything.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    ledger.owners[(2, 2)] = "another sender"
    assert await batch_sending(ledger, transport).send(batch(1, 2, 3), 1) == Nak(60)
    assert sorted(transport.recipients()) == ["p1@example.net", "p3@example.net"]


async def test_a_second_copy_of_a_batch_in_the_same_process_waits_for_the_first_and_sends_nothing():
    # A batch is redelivered while this process is still delivering it: the second copy joins the
    # deliveries under way instead of offering the messages again; both copies end acked.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    transport.gate = asyncio.Event()
    sending = batch_sending(ledger, transport, render_pool=InlineExecutor())
    first = asyncio.create_task(sending.send(batch(1, 2, 3), 1))
    await transport.offered_at_least(3)
    second = asyncio.create_task(sending.send(batch(1, 2, 3), 2))
    # Nothing here waits on I/O: a few turns of the loop take the second copy to its wait.
    for _ in range(20):
        await asyncio.sleep(0)
    transport.gate.set()
    assert await asyncio.gather(first, second) == [Ack(), Ack()]
    assert sorted(transport.recipients()) == ["p1@example.net", "p2@example.net", "p3@example.net"]


async def test_deferred_recipients_are_retried_then_expire_at_the_give_up_age():
    # A 450 defers a recipient (attempt 1) and the batch comes back after the base delay; once the
    # clock has moved past the give-up age since its first attempt, the next deferral expires it and the
    # batch is acked. The recipient accepted at first is not offered again.
    clock = MovableClock()
    ledger = MemoryLedger(clock)
    transport = RecordingTransport(
        lambda r, seen: reply_result(450, "4.2.0 busy", True) if r == "p1@example.net" else None
    )
    sending = batch_sending(ledger, transport)
    assert await sending.send(batch(1, 2), 1) == Nak(60)
    assert (ledger.rows[(2, 1)].status, ledger.rows[(2, 1)].attempts) == (DeliveryStatus.DEFERRED, 1)
    assert await sending.send(batch(1, 2), 2) == Nak(120)
    clock.advance(3601)
    assert await sending.send(batch(1, 2), 3) == Ack()
    assert ledger.rows[(2, 1)].status == DeliveryStatus.EXPIRED
    assert transport.recipients().count("p2@example.net") == 1


async def test_a_campaign_that_cannot_be_sent_fails_every_recipient_once_and_is_dropped():
    # A template syntax error: every recipient is rejected saying so, nobody is offered anything, and
    # the batch is dropped rather than retried.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    broken = replace(CONTENT, html_body="<p>{{ name </p>")
    decision = await batch_sending(ledger, transport).send(batch(1, 2, content=broken), 1)
    assert isinstance(decision, Term) and "template error" in decision.reason
    assert transport.offered == []
    assert [(o.status, "template error" in o.smtp_message) for o in ledger.recorded] == [
        (DeliveryStatus.REJECTED, True), (DeliveryStatus.REJECTED, True),
    ]  # fmt: skip


async def test_a_redelivered_batch_reports_final_recipients_again_without_offering_them():
    # The batch was delivered, but its sender may have died before the report: redelivered, it reports
    # every recipient again as the ledger holds them, and offers nothing.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    sending = batch_sending(ledger, transport)
    await sending.send(batch(1, 2), 1)
    ledger.recorded.clear()
    assert await sending.send(batch(1, 2), 2) == Ack()
    assert len(transport.offered) == 2
    assert [(o.subscriber_id, o.status, o.counts_attempt) for o in ledger.recorded] == [
        (1, DeliveryStatus.SENT, False), (2, DeliveryStatus.SENT, False),
    ]  # fmt: skip


def transactional_sending(ledger: MemoryLedger, transport: RecordingTransport) -> TransactionalSending:
    """The transactional path over the in-memory collaborators."""
    return TransactionalSending(
        ledger=ledger, recorder=ledger, suppressions=ledger, transport=transport, composer=composer(),
        policy=POLICY, clock=ledger.clock,
    )  # fmt: skip


def message(
    key: str, category: str, to: str = "taro@example.net", created_at: dt.datetime | None = None, platform: bool = True
) -> Message:
    """A transactional message of organisation 1 (the platform's own unless told)."""
    return Message(1, key, to, "Taro", CONTENT, "{}", category, created_at, platform=platform)


async def test_a_transactional_message_is_delivered_once_per_key():
    # A password reset is delivered and acked; the same key again is acked without a second offer.
    ledger, transport = MemoryLedger(MovableClock()), RecordingTransport()
    sending = transactional_sending(ledger, transport)
    assert await sending.send(message("auth.reset.1", "auth.password_reset"), 1) == Ack()
    assert await sending.send(message("auth.reset.1", "auth.password_reset"), 1) == Ack()
    assert transport.recipients() == ["taro@example.net"]
    assert ledger.transactional[(1, "auth.reset.1")].status == DeliveryStatus.SENT


async def test_suppression_withholds_transactional_mail_except_account_mail_and_confirmations():
    # To a suppressed address: a password reset and an opt-in confirmation go out, a test send is
    # withheld (recorded as suppressed, acked). A confirmation asked for before its subscriber was
    # erased is withheld as erased.
    clock = MovableClock()
    ledger, transport = MemoryLedger(clock), RecordingTransport()
    ledger.suppressions["taro@example.net"] = "manual"
    sending = transactional_sending(ledger, transport)
    for key, category in (("r", "auth.password_reset"), ("c", "lists.confirm"), ("t", "campaigns.test")):
        assert await sending.send(message(key, category), 1) == Ack()
    # An application's message is checked whatever category it names.
    for key, category in (("ar", "auth.password_reset"), ("ac", "lists.confirm")):
        assert await sending.send(message(key, category, platform=False), 1) == Ack()
    asked = clock.now()
    ledger.erased_addresses["hanako@example.net"] = asked + dt.timedelta(seconds=1)
    assert await sending.send(message("c2", "lists.confirm", "hanako@example.net", asked), 1) == Ack()
    assert transport.recipients() == ["taro@example.net", "taro@example.net"]
    statuses = {key: row.status for (_, key), row in ledger.transactional.items()}
    assert statuses == {
        "r": DeliveryStatus.SENT, "c": DeliveryStatus.SENT, "t": DeliveryStatus.SUPPRESSED,
        "c2": DeliveryStatus.SUPPRESSED, "ar": DeliveryStatus.SUPPRESSED, "ac": DeliveryStatus.SUPPRESSED,
    }  # fmt: skip
    assert ledger.transactional[(1, "c2")].smtp_message == "suppressed: erased"


async def test_a_deferred_transactional_message_is_retried_until_its_age_reaches_the_give_up_age():
    # A 451 defers the message: retried after the backoff of its delivery count. An hour after it was
    # asked for (the clock moved), the next deferral expires it, and it is acked.
    clock = MovableClock()
    ledger = MemoryLedger(clock)
    transport = RecordingTransport(lambda r, seen: reply_result(451, "4.7.1 greylisted", True))
    sending = transactional_sending(ledger, transport)
    reset = message("auth.reset.2", "auth.password_reset", created_at=clock.now())
    assert await sending.send(reset, 1) == Nak(60)
    assert await sending.send(reset, 2) == Nak(120)
    clock.advance(3600)
    assert await sending.send(reset, 3) == Ack()
    assert ledger.transactional[(1, "auth.reset.2")].status == DeliveryStatus.EXPIRED
    assert len(transport.offered) == 3
