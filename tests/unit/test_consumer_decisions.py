"""What the consumers of campaigns, bounce and the erasure holders make of a payload, without NATS or a database."""

from mailblast.v1 import events_pb2

from services.bounce.consumers import bounces_of
from services.bounce.kinds import BounceKind, BounceSource
from services.campaigns.consumers import bounce_outcome, outcomes_of
from services.campaigns.states import RecipientStatus
from services.common.erasure import erasure_of

HASH = "ab" * 32


def event(subscriber_id: int, outcome, campaign_id: int = 7, **fields) -> events_pb2.DeliveryEvent:
    """One recipient's DeliveryEvent as the sender reports it."""
    return events_pb2.DeliveryEvent(
        organization_id=1, campaign_id=campaign_id, subscriber_id=subscriber_id, email=f"s{subscriber_id}@example.net",
        outcome=outcome, **fields,
    )  # fmt: skip


def test_a_delivery_report_counts_each_campaign_recipient_once_per_event():
    # A report of a campaign's deliveries: each outcome becomes the recipient's status (a refusal is a
    # bounce, an expiry a failure); an event without an outcome counts nothing.
    report = events_pb2.DeliveryReport(
        events=[
            event(1, events_pb2.DELIVERY_OUTCOME_SENT, smtp_code=250),
            event(2, events_pb2.DELIVERY_OUTCOME_REJECTED, smtp_code=550),
            event(3, events_pb2.DELIVERY_OUTCOME_EXPIRED, smtp_code=451),
            event(4, events_pb2.DELIVERY_OUTCOME_UNSPECIFIED),
        ]
    )
    counted = [(o.subscriber_id, o.status, o.smtp_code) for o in outcomes_of(report)]
    assert counted == [
        (1, RecipientStatus.SENT, 250),
        (2, RecipientStatus.BOUNCED, 550),
        (3, RecipientStatus.FAILED, 451),
    ]


def test_campaigns_count_only_returned_bounces_of_campaign_mail():
    # A DSN of campaign mail is a bounce to count; the sender's own refusal was counted from its report,
    # a complaint is no bounce, and a transactional message (no campaign) has no counters.
    def bounce(**fields) -> events_pb2.BounceEvent:
        base = {
            "bounce_id": "b1", "organization_id": 1, "campaign_id": 7, "subscriber_id": 3, "email": "x@example.net",
            "kind": events_pb2.BOUNCE_KIND_HARD, "source": events_pb2.BOUNCE_SOURCE_DSN, "smtp_code": 550,
        }  # fmt: skip
        return events_pb2.BounceEvent(**{**base, **fields})

    counted = bounce_outcome(bounce())
    assert counted is not None
    bounce_id, outcome = counted
    assert (bounce_id, outcome.campaign_id, outcome.subscriber_id, outcome.status) == ("b1", 7, 3, "bounced")
    assert bounce_outcome(bounce(source=events_pb2.BOUNCE_SOURCE_SMTP)) is None
    assert bounce_outcome(bounce(kind=events_pb2.BOUNCE_KIND_COMPLAINT)) is None
    assert bounce_outcome(bounce(campaign_id=0)) is None


def test_a_delivery_report_implies_bounces_for_refusals_and_expiries_of_campaign_mail():
    # The sender's 5xx is classified (5.1.1: hard), an expiry is soft; accepted mail and transactional
    # mail imply nothing. Each bounce's id is stable per recipient and attempt.
    report = events_pb2.DeliveryReport(
        events=[
            event(9, events_pb2.DELIVERY_OUTCOME_REJECTED, smtp_code=550, enhanced_status="5.1.1", attempt=1,
                  smtp_message="5.1.1 user unknown"),
            event(10, events_pb2.DELIVERY_OUTCOME_EXPIRED, smtp_code=451, attempt=7),
            event(11, events_pb2.DELIVERY_OUTCOME_SENT, smtp_code=250),
            event(0, events_pb2.DELIVERY_OUTCOME_REJECTED, campaign_id=0, smtp_code=550),
        ]
    )  # fmt: skip
    rows = bounces_of(report)
    assert [(r.subscriber_id, r.kind, r.source, r.reason) for r in rows] == [
        (9, BounceKind.HARD, BounceSource.SMTP, "userunknown"),
        (10, BounceKind.SOFT, BounceSource.SMTP, "expired"),
    ]
    assert [r.bounce_id for r in bounces_of(report)] == [r.bounce_id for r in rows]


def test_an_erasure_needs_its_organisation_subscriber_and_keyed_hash():
    # An erasure that names all three is applied; one lacking any could not find the rows to rewrite.
    erasure = erasure_of(
        events_pb2.SubscriberErased(erasure_id="e1", organization_id=1, subscriber_id=7, email_hash=HASH)
    )
    assert erasure is not None
    assert (erasure.erasure_id, erasure.organization_id, erasure.subscriber_id, erasure.email_hash) == (
        "e1",
        1,
        7,
        HASH,
    )
    assert erasure_of(events_pb2.SubscriberErased(organization_id=1, subscriber_id=7)) is None
    assert erasure_of(events_pb2.SubscriberErased(organization_id=1, email_hash=HASH)) is None
    assert erasure_of(events_pb2.SubscriberErased(subscriber_id=7, email_hash=HASH)) is None
