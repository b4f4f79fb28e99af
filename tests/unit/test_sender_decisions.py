"""The sender's send decisions as pure functions, with plain values: no NATS, SMTP or PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from services.common.decision import Ack, Nak, Term
from services.sender import decisions
from services.sender.decisions import RetryPolicy, Step, Verdict
from services.sender.ledger import DeliveryStatus, LedgerState, Outcome

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
POLICY = RetryPolicy(base_seconds=60, max_seconds=3600, give_up_seconds=4 * 86400, pause_recheck_seconds=30)


@dataclass(frozen=True)
class Person:
    """A recipient as the decisions see one: just its subscriber id (and an address to tell them apart)."""

    subscriber_id: int
    email: str = ""


def outcome(subscriber_id: int, status: DeliveryStatus, attempt: int = 1, **fields) -> Outcome:
    """An outcome of one recipient of campaign 2 of organisation 1."""
    values = dict(
        organization_id=1, campaign_id=2, subscriber_id=subscriber_id, email=f"s{subscriber_id}@example.net",
        status=status, message_id="", smtp_code=450 if status == DeliveryStatus.DEFERRED else 250,
        smtp_message="", enhanced_status="", tls=True, attempt=attempt, counts_attempt=True, occurred_at=NOW,
    )  # fmt: skip
    values.update(fields)
    return Outcome(**values)


def test_campaign_states_give_verdicts_and_a_halted_batch_is_retried_or_dropped():
    # Paused holds the batch back for the recheck delay without any attempt; cancelled drops it; every
    # other state, and a campaign the copy has not heard of yet, lets it go.
    assert decisions.verdict_of("paused") == Verdict.PAUSED
    assert decisions.verdict_of("cancelled") == Verdict.CANCELLED
    assert [decisions.verdict_of(s) for s in ("sending", "draft", "sent", None)] == [Verdict.GO] * 4
    assert decisions.halt(Verdict.PAUSED, POLICY) == Nak(30)
    assert decisions.halt(Verdict.CANCELLED, POLICY) == Ack()


def test_a_batch_works_on_each_recipient_once_and_reports_final_ones_again_only_on_redelivery():
    # A recipient listed twice is worked on once; one already sent is skipped on the first delivery and,
    # on a redelivery (its report may have been lost with a killed sender), reported again as it stands.
    sent_at = NOW - dt.timedelta(minutes=5)
    states = {
        2: LedgerState(DeliveryStatus.SENT, 1, email="s2@example.net", smtp_code=250, updated_at=sent_at),
        3: LedgerState(DeliveryStatus.DEFERRED, 1),
        4: LedgerState(DeliveryStatus.CLAIMED, 0),
    }
    people = [Person(1), Person(2), Person(1), Person(3), Person(4)]
    first = decisions.plan_batch(people, states, delivery_count=1)
    assert first.todo == [Person(1), Person(3), Person(4)] and first.report_again == []
    again = decisions.plan_batch(people, states, delivery_count=2)
    assert again.todo == first.todo and again.report_again == [(Person(2), states[2])]
    [reported] = [decisions.report_again(1, 2, p.subscriber_id, s, NOW) for p, s in again.report_again]
    assert (reported.status, reported.attempt, reported.counts_attempt, reported.occurred_at) == (
        DeliveryStatus.SENT, 1, False, sent_at,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("claimed", "in_flight", "withheld", "step"),
    [
        (False, False, False, Step.BUSY),
        (False, True, True, Step.BUSY),
        (True, True, False, Step.JOIN),
        (True, True, True, Step.JOIN),
        (True, False, True, Step.WITHHOLD),
        (True, False, False, Step.DELIVER),
    ],
)
def test_after_a_claim_only_what_this_pass_holds_is_delivered_and_only_once_per_process(
    claimed, in_flight, withheld, step
):
    # Not claimed: another sender has it. Under way in this process for another copy of the batch:
    # wait for that outcome. Suppressed or erased: withheld. Otherwise: deliver.
    assert (
        decisions.step_for(7, frozenset({7} if claimed else ()), in_flight, {7: "unsubscribed"} if withheld else {})
        == step
    )


def test_a_batch_whose_recipients_are_all_final_is_acked_unless_another_sender_holds_some():
    # Everyone final: ack. Some held by another sender: come back after the base delay to see to them.
    done = [outcome(1, DeliveryStatus.SENT), outcome(2, DeliveryStatus.REJECTED, smtp_code=550)]
    assert decisions.settle_batch(done, {}, busy=0, now=NOW, policy=POLICY) == decisions.Settlement(Ack(), [])
    assert decisions.settle_batch(done, {}, busy=3, now=NOW, policy=POLICY).decision == Nak(60)


def test_deferred_recipients_are_retried_with_backoff_by_their_own_attempts_and_age():
    # The backoff doubles with the recipients' attempts (not NATS's delivery count) and never waits past
    # the give-up age: a recipient first tried 3 days 23 h 59 min ago is retried at the give-up moment.
    outcomes = [outcome(1, DeliveryStatus.SENT), outcome(2, DeliveryStatus.DEFERRED, attempt=3)]
    young = decisions.settle_batch(outcomes, {2: NOW - dt.timedelta(hours=1)}, 0, NOW, POLICY)
    assert young == decisions.Settlement(Nak(240), [])
    nearly = {2: NOW - dt.timedelta(days=4) + dt.timedelta(seconds=60)}
    assert decisions.settle_batch(outcomes, nearly, 0, NOW, POLICY).decision == Nak(pytest.approx(60.05))
    # A recipient never tried before this pass (no first attempt yet) is as young as can be.
    assert decisions.settle_batch(outcomes, {}, 0, NOW, POLICY).decision == Nak(240)


def test_deferred_recipients_expire_at_the_give_up_age_and_the_batch_ends():
    # Four days after a recipient's first attempt, a deferral is final: it becomes an expiry (a decision,
    # not another attempt, with the last attempt's number), and the batch is acked.
    deferred = outcome(2, DeliveryStatus.DEFERRED, attempt=9, smtp_code=451)
    settled = decisions.settle_batch([deferred], {2: NOW - dt.timedelta(days=4)}, 0, NOW, POLICY)
    assert settled.decision == Ack()
    [expired] = settled.expiries
    assert (expired.status, expired.attempt, expired.counts_attempt, expired.smtp_code) == (
        DeliveryStatus.EXPIRED, 9, False, 451,
    )  # fmt: skip
    # Others still held elsewhere bring the batch back even so.
    assert decisions.settle_batch([deferred], {2: NOW - dt.timedelta(days=5)}, 1, NOW, POLICY).decision == Nak(60)


def test_transactional_categories_withheld_from_suppressed_addresses_and_erasures():
    # Account mail and double opt-in confirmations reach even a suppressed address; other kinds do not.
    # Mail about a subscription asked for before its subscriber was erased is withheld as erased, even a
    # confirmation; other mail to an erased address (a test send) is judged by the suppression alone.
    assert decisions.withheld_reason("auth.password_reset", False, "unsubscribed") is None
    assert decisions.withheld_reason("lists.confirm", False, "unsubscribed") is None
    assert decisions.withheld_reason("lists.confirm", True, None) == "erased"
    assert decisions.withheld_reason("lists.welcome", False, "complaint") == "complaint"
    assert decisions.withheld_reason("campaigns.test", False, "manual") == "manual"
    assert decisions.withheld_reason("campaigns.test", True, None) is None
    assert decisions.withheld_reason("", False, None) is None


def test_a_transactional_message_is_acked_when_sent_dropped_when_refused_and_retried_when_deferred():
    # Sent: ack. 5xx: dropped for good, saying why. Deferred: retried after the backoff of its delivery
    # count; at the give-up age it expires and is acked.
    sent = outcome(0, DeliveryStatus.SENT, message_key="k")
    refused = outcome(0, DeliveryStatus.REJECTED, smtp_code=550, smtp_message="5.1.1 no such user")
    deferred = outcome(0, DeliveryStatus.DEFERRED, smtp_code=451)
    assert decisions.settle_transactional(sent, 10, 1, NOW, POLICY).decision == Ack()
    assert decisions.settle_transactional(refused, 10, 1, NOW, POLICY).decision == Term(
        "refused for good: 5.1.1 no such user"
    )
    assert decisions.settle_transactional(deferred, 10, 3, NOW, POLICY) == decisions.Settlement(Nak(240), [])
    gone = decisions.settle_transactional(deferred, 4 * 86400, 3, NOW, POLICY)
    assert gone.decision == Ack() and [e.status for e in gone.expiries] == [DeliveryStatus.EXPIRED]


def test_statuses_know_which_are_final():
    # Sent, rejected, expired and suppressed are final; a claim and a deferral are not.
    assert {s for s in DeliveryStatus if s.final} == {
        DeliveryStatus.SENT, DeliveryStatus.REJECTED, DeliveryStatus.EXPIRED, DeliveryStatus.SUPPRESSED,
    }  # fmt: skip
