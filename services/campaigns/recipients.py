"""The fan-out's Audience: a campaign's recipients streamed from the lists service (StreamRecipients)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from mailblast.v1 import lists_pb2, lists_pb2_grpc

from services.campaigns.fanout import Recipient
from services.campaigns.store import CampaignRow

# A fan-out streams for as long as its campaign has recipients left; the stream ends by itself or is cancelled.
STREAM_TIMEOUT_SECONDS = 3600


class ListsAudience:
    """Asks lists for the subscribers of a campaign's lists and segments, after the last one handed out."""

    def __init__(self, lists: lists_pb2_grpc.ListsServiceStub) -> None:
        self._lists = lists

    async def recipients(self, campaign: CampaignRow, chunk_size: int) -> AsyncGenerator[Sequence[Recipient], None]:
        """The recipients chunk by chunk; closing the generator cancels the call."""
        stream = self._lists.StreamRecipients(
            lists_pb2.StreamRecipientsRequest(
                list_ids=campaign.list_ids,
                segment_ids=campaign.segment_ids,
                chunk_size=chunk_size,
                after_subscriber_id=campaign.last_subscriber_id,
            ),
            timeout=STREAM_TIMEOUT_SECONDS,
        )
        try:
            async for chunk in stream:
                yield [
                    Recipient(r.subscriber_id, r.email, r.name, attributes_json=r.attributes_json)
                    for r in chunk.recipients
                ]
        finally:
            stream.cancel()
