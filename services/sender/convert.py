"""Protobuf <-> the sender's domain, in one place: payloads in, reports and ledger rows out, statuses both ways."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import campaigns_pb2, events_pb2, sender_pb2

from services.sender.ledger import DeliveryStatus, Outcome
from services.sender.sending import Batch, Content, Recipient
from services.sender.signing import DomainKey
from services.sender.store import Delivery
from services.sender.store_copies import CampaignStateChange, SendingDomainChange, SuppressionChange
from services.sender.transactional import Message


def _name(status: DeliveryStatus) -> str:
    return status.value.upper()


def outcome_enum(status: DeliveryStatus) -> events_pb2.DeliveryOutcome:
    """The DeliveryOutcome a status is reported as (a claim is never reported)."""
    return events_pb2.DeliveryOutcome.Value(f"DELIVERY_OUTCOME_{_name(status)}")


def status_enum(status: DeliveryStatus) -> sender_pb2.DeliveryStatus:
    """The sender.proto DeliveryStatus of a ledger status."""
    return sender_pb2.DeliveryStatus.Value(f"DELIVERY_STATUS_{_name(status)}")


def _content(content: events_pb2.MessageContent) -> Content:
    return Content(
        content.from_name, content.from_address, content.reply_to, content.subject, content.html_body, content.text_body
    )


def batch(message: events_pb2.SendBatch) -> Batch:
    """The domain's view of a SendBatch."""
    return Batch(
        organization_id=message.organization_id,
        campaign_id=message.campaign_id,
        batch_number=message.batch_number,
        content=_content(message.content),
        recipients=[Recipient(r.subscriber_id, r.email, r.name, r.attributes_json) for r in message.recipients],
        tracking=message.tracking,
    )


def transactional(message: events_pb2.TransactionalMessage, *, platform: bool = False) -> Message:
    """The domain's view of a TransactionalMessage (`platform`: it came on the platform's own subject)."""
    return Message(
        organization_id=message.organization_id,
        message_key=message.message_key,
        to_address=message.to_address,
        to_name=message.to_name,
        content=_content(message.content),
        variables_json=message.variables_json,
        category=message.category,
        created_at=message.created_at.ToDatetime(tzinfo=dt.UTC) if message.HasField("created_at") else None,
        platform=platform,
    )


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
                outcome=outcome_enum(o.status),
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


def delivery(row: Delivery) -> sender_pb2.Delivery:
    """A ledger row as GetDelivery answers it."""
    return sender_pb2.Delivery(
        campaign_id=row.campaign_id,
        subscriber_id=row.subscriber_id,
        email=row.email,
        status=status_enum(row.status),
        message_id=row.message_id,
        smtp_code=row.smtp_code,
        smtp_message=row.smtp_message,
        tls=row.tls,
        attempts=row.attempts,
    )


def _changed_at(
    event: events_pb2.CampaignStateChanged | events_pb2.SuppressionChanged | events_pb2.SendingDomainChanged,
) -> dt.datetime | None:
    return event.changed_at.ToDatetime(tzinfo=dt.UTC) if event.HasField("changed_at") else None


def campaign_state_change(event: events_pb2.CampaignStateChanged) -> CampaignStateChange:
    """A campaign state change as the copy keeps it: the state by the name campaigns stores it under."""
    state = campaigns_pb2.CampaignState.Name(event.state).removeprefix("CAMPAIGN_STATE_").lower()
    return CampaignStateChange(event.organization_id, event.campaign_id, state, event.version, _changed_at(event))


def suppression_change(event: events_pb2.SuppressionChanged) -> SuppressionChange:
    """A suppression change as the copy keeps it: the reason by its name in lists, None once lifted."""
    reason = events_pb2.SuppressionReason.Name(event.reason).removeprefix("SUPPRESSION_REASON_").lower()
    reason_or_none = reason if event.suppressed else None
    return SuppressionChange(event.organization_id, event.email_hash, reason_or_none, event.version, _changed_at(event))


def sending_domain_change(event: events_pb2.SendingDomainChanged) -> SendingDomainChange:
    """A sending domain's state as the copy keeps it (keys still sealed)."""
    keys = tuple(DomainKey(k.selector, k.algorithm, k.sealed_private_key) for k in event.keys)
    return SendingDomainChange(
        event.organization_id, event.domain_id, event.domain.lower(), event.verified and bool(event.domain),
        event.return_path_domain, keys, event.version, _changed_at(event),
    )  # fmt: skip
