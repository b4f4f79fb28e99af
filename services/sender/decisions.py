"""The send decisions as pure functions: what to do with a batch, a recipient, a transactional message.

No I/O here and no clock: the callers (sending.py, transactional.py) look things up, pass them in
with the time, and carry the decision out. Tested with plain values in tests/unit/test_sender_decisions.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from services.common.decision import Ack, Decision, Nak, Term
from services.sender import retry
from services.sender.ledger import DeliveryStatus, LedgerState, Outcome

# Categories delivered even to a suppressed address: account mail must always arrive, and a double
# opt-in confirmation is how a person who once unsubscribed subscribes again.
UNSUPPRESSED_PREFIXES = ("auth.", "lists.confirm")
# Mail about a subscription, which an erasure of its subscriber withdraws; other mail (account notices,
# test sends) to the same address still goes, its ledger row keeping only the keyed hash.
SUBSCRIBER_PREFIX = "lists."
# The reason recorded for a recipient whose subscriber was erased.
ERASED = "erased"


class Verdict(StrEnum):
    """What a campaign's state says about delivering its batches now."""

    GO = "go"
    PAUSED = "paused"
    CANCELLED = "cancelled"


def verdict_of(state: str | None) -> Verdict:
    """The verdict of a campaign state as the campaigns service names it; unknown or absent: go.

    A campaign whose state the senders have not heard of yet is one whose batches campaigns has just
    published: its first state change is on its way.
    """
    if state == "paused":
        return Verdict.PAUSED
    if state == "cancelled":
        return Verdict.CANCELLED
    return Verdict.GO


@dataclass(frozen=True)
class RetryPolicy:
    """When deferred work is tried again and when it is given up."""

    base_seconds: float
    max_seconds: float
    give_up_seconds: float
    # How long a paused campaign's batch waits before the sender looks at the campaign again.
    pause_recheck_seconds: float = 30.0


class _HasSubscriber(Protocol):
    @property
    def subscriber_id(self) -> int: ...


R = TypeVar("R", bound=_HasSubscriber)


# -------------------------------------------------------------------------------------- campaign batches


def halt(verdict: Verdict, policy: RetryPolicy) -> Decision:
    """A paused campaign's batch comes back later, untouched; a cancelled one's is dropped."""
    if verdict == Verdict.PAUSED:
        # A plain redelivery, not a retry: nothing is recorded, so no recipient spends an attempt.
        return Nak(policy.pause_recheck_seconds)
    return Ack()


@dataclass(frozen=True)
class BatchPlan(Generic[R]):
    """The recipients of a batch to work on, and the final ones to report again."""

    todo: list[R]
    report_again: list[tuple[R, LedgerState]]


def plan_batch(recipients: Sequence[R], states: Mapping[int, LedgerState], delivery_count: int) -> BatchPlan[R]:
    """Each recipient once; those already final are skipped, and reported again on a redelivery.

    A sender killed between its ledger commit and the report left them unreported: a redelivered batch
    reports them again (the ledger keeps final rows as they are; the consumers take repeats in stride).
    """
    todo: list[R] = []
    again: list[tuple[R, LedgerState]] = []
    seen: set[int] = set()
    for recipient in recipients:
        if recipient.subscriber_id in seen:
            continue
        seen.add(recipient.subscriber_id)
        state = states.get(recipient.subscriber_id)
        if state is not None and state.status.final:
            if delivery_count > 1:
                again.append((recipient, state))
            continue
        todo.append(recipient)
    return BatchPlan(todo, again)


def report_again(
    organization_id: int, campaign_id: int, subscriber_id: int, state: LedgerState, now: dt.datetime
) -> Outcome:
    """The outcome a final ledger row records, to be reported again (no attempt)."""
    return Outcome(
        organization_id=organization_id,
        campaign_id=campaign_id,
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
        occurred_at=state.updated_at or now,
    )


class Step(StrEnum):
    """What happens to one recipient of a chunk the sender tried to claim."""

    # Another sender holds it (or it became final meanwhile): the batch looks again later.
    BUSY = "busy"
    # This process is delivering it for another copy of the batch: wait for that outcome.
    JOIN = "join"
    # Suppressed or erased: recorded as suppressed, never offered.
    WITHHOLD = "withhold"
    DELIVER = "deliver"


def step_for(subscriber_id: int, claimed: frozenset[int], in_flight: bool, withheld: Mapping[int, str]) -> Step:
    """The step for a recipient after a claim: only what this pass claimed is delivered, once per process."""
    if subscriber_id not in claimed:
        return Step.BUSY
    if in_flight:
        return Step.JOIN
    if subscriber_id in withheld:
        return Step.WITHHOLD
    return Step.DELIVER


@dataclass(frozen=True)
class Settlement:
    """How a batch ends after its deliveries: the decision, and the expiries to record before it."""

    decision: Decision
    expiries: list[Outcome]


def settle_batch(
    outcomes: Sequence[Outcome],
    first_attempts: Mapping[int, dt.datetime | None],
    busy: int,
    now: dt.datetime,
    policy: RetryPolicy,
) -> Settlement:
    """Ack when every recipient is final; retry the deferred after a backoff, or expire them when given up.

    The give-up clock and the backoff follow the recipients' own attempts, not the batch's age or NATS's
    delivery count: time spent paused, or waiting behind other batches, costs no retries. Recipients
    another sender holds bring the batch back after the base delay.
    """
    later = Nak(policy.base_seconds) if busy else Ack()
    deferred = [o for o in outcomes if o.status == DeliveryStatus.DEFERRED]
    if not deferred:
        return Settlement(later, [])
    firsts = [first_attempts.get(o.subscriber_id) or now for o in deferred]
    age = max((now - min(firsts)).total_seconds(), 0.0)
    if retry.given_up(age, policy.give_up_seconds):
        return Settlement(later, [expiry(o, now) for o in deferred])
    attempts = max(o.attempt for o in deferred)
    delay = retry.next_retry_delay(attempts, age, policy.base_seconds, policy.max_seconds, policy.give_up_seconds)
    return Settlement(Nak(delay), [])


def expiry(outcome: Outcome, now: dt.datetime) -> Outcome:
    """A deferred outcome given up: expired, a decision rather than another attempt."""
    return replace(outcome, status=DeliveryStatus.EXPIRED, counts_attempt=False, occurred_at=now)


# -------------------------------------------------------------------------------------- transactional mail


def checks_suppression(category: str, platform: bool = True) -> bool:
    """Whether a transactional message of this category is withheld from suppressed addresses.

    Only the platform's own account mails and confirmations go to suppressed addresses; an application's
    message is always checked, whatever category it names.
    """
    return not (platform and category.startswith(UNSUPPRESSED_PREFIXES))


def withdrawn_by_erasure(category: str) -> bool:
    """Whether an erasure of the recipient after the message was asked for withdraws it (mail about a subscription)."""
    return category.startswith(SUBSCRIBER_PREFIX)


def withheld_reason(
    category: str, erased_after_asked: bool, suppression: str | None, platform: bool = True
) -> str | None:
    """Why a transactional message is not sent, or None to send it."""
    if withdrawn_by_erasure(category) and erased_after_asked:
        # Asked for before its subscriber was erased (a confirmation whose consent is gone): never sent.
        return ERASED
    if not checks_suppression(category, platform):
        return None
    return suppression


def settle_transactional(
    outcome: Outcome, age_seconds: float, delivery_count: int, now: dt.datetime, policy: RetryPolicy
) -> Settlement:
    """Sent: ack; refused for good: dropped; deferred: retried after a backoff, or expired at the give-up age."""
    if outcome.status == DeliveryStatus.SENT:
        return Settlement(Ack(), [])
    if outcome.status == DeliveryStatus.REJECTED:
        return Settlement(Term(f"refused for good: {outcome.smtp_message}"), [])
    if retry.given_up(age_seconds, policy.give_up_seconds):
        return Settlement(Ack(), [expiry(outcome, now)])
    delay = retry.next_retry_delay(
        delivery_count, age_seconds, policy.base_seconds, policy.max_seconds, policy.give_up_seconds
    )
    return Settlement(Nak(delay), [])
