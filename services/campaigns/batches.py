"""The fan-out's Batches: SendBatch messages for the senders on JetStream, de-duplicated by batch number."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2
from nats.js import JetStreamContext

from services.campaigns.fanout import Recipient, batch_msg_id
from services.campaigns.store import CampaignRow
from services.common import bus, metrics


def send_batch(campaign: CampaignRow, batch_number: int, recipients: Sequence[Recipient]) -> events_pb2.SendBatch:
    """The SendBatch of one batch of a campaign: its content and recipients, stamped now."""
    created = Timestamp()
    created.GetCurrentTime()
    return events_pb2.SendBatch(
        organization_id=campaign.organization_id,
        campaign_id=campaign.id,
        batch_number=batch_number,
        content=events_pb2.MessageContent(
            from_name=campaign.from_name,
            from_address=campaign.from_address,
            reply_to=campaign.reply_to,
            subject=campaign.subject,
            html_body=campaign.html_body,
            text_body=campaign.text_body,
        ),
        recipients=[
            events_pb2.BatchRecipient(
                subscriber_id=r.subscriber_id, email=r.email, name=r.name, attributes_json=r.attributes_json
            )
            for r in recipients
        ],
        created_at=created,
        tracking=campaign.tracking,
    )


class JetStreamBatches:
    """Publishes batches on mailblast.send.batch with Nats-Msg-Id send-<campaign>-<batch>."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, campaign: CampaignRow, batch_number: int, recipients: Sequence[Recipient]) -> None:
        """Publish one batch; JetStream drops a republished one with the same id."""
        message = send_batch(campaign, batch_number, recipients)
        await bus.publish(self._js, bus.SUBJECT_SEND_BATCH, message, msg_id=batch_msg_id(campaign.id, batch_number))
        metrics.FANOUT_BATCHES.labels("campaigns").inc()
        metrics.FANOUT_RECIPIENTS.labels("campaigns").inc(len(recipients))
