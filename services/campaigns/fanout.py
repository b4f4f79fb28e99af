"""Fan-out: stream a campaign's recipients from lists and publish them to the senders in batches."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import events_pb2, lists_pb2, lists_pb2_grpc
from nats.js import JetStreamContext
from opentelemetry import trace

from services.campaigns.store import CampaignRow, CampaignStore
from services.common import bus
from services.common.identity import Principal, reset_principal, set_principal
from services.common.log import get_logger

log = get_logger(__name__)
tracer = trace.get_tracer("mailblast.campaigns")


def batch_msg_id(campaign_id: int, batch_number: int) -> str:
    """The de-duplication id of a batch: the same for a batch republished after a restart."""
    return f"send-{campaign_id}-{batch_number}"


class FanOut:
    """Runs one fan-out task per sending campaign."""

    def __init__(
        self,
        store: CampaignStore,
        js: JetStreamContext,
        lists: lists_pb2_grpc.ListsServiceStub,
        batch_size: int,
    ) -> None:
        self._store = store
        self._js = js
        self._lists = lists
        self._batch_size = batch_size
        self._tasks: dict[int, asyncio.Task] = {}

    def start(self, campaign: CampaignRow) -> None:
        """Start (or keep) the fan-out of a campaign in the background, under the current trace."""
        task = self._tasks.get(campaign.id)
        if task is not None and not task.done():
            return
        self._tasks[campaign.id] = asyncio.create_task(
            self._run_until_done(campaign.organization_id, campaign.id), name=f"fanout-{campaign.id}"
        )

    async def wait(self, campaign_id: int) -> None:
        """Wait for a campaign's fan-out task to end (for tests and shutdown)."""
        task = self._tasks.get(campaign_id)
        if task is not None:
            await asyncio.shield(task)

    async def stop(self) -> None:
        """Cancel running fan-outs; their progress is saved batch by batch and resumes at the next start."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def _run_until_done(self, organization_id: int, campaign_id: int) -> None:
        token = set_principal(Principal(organization_id=organization_id, scopes=("read",), service="campaigns"))
        try:
            delay = 1.0
            while True:
                try:
                    await self._run(organization_id, campaign_id)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("fan-out interrupted; retrying", campaign_id=campaign_id, retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
        finally:
            reset_principal(token)

    async def _run(self, organization_id: int, campaign_id: int) -> None:
        with tracer.start_as_current_span("campaign.fanout", attributes={"mailblast.campaign_id": campaign_id}) as span:
            campaign = await self._store.get(organization_id, campaign_id)
            if campaign is None or campaign.state != "sending" or campaign.fanout_complete:
                return
            content = events_pb2.MessageContent(
                from_name=campaign.from_name,
                from_address=campaign.from_address,
                reply_to=campaign.reply_to,
                subject=campaign.subject,
                html_body=campaign.html_body,
                text_body=campaign.text_body,
            )
            batch_number = campaign.published_batches
            pending: list[events_pb2.BatchRecipient] = []
            stream = self._lists.StreamRecipients(
                lists_pb2.StreamRecipientsRequest(
                    list_ids=campaign.list_ids,
                    segment_ids=campaign.segment_ids,
                    chunk_size=self._batch_size,
                    after_subscriber_id=campaign.last_subscriber_id,
                ),
                timeout=3600,
            )
            async for chunk in stream:
                for r in chunk.recipients:
                    pending.append(
                        events_pb2.BatchRecipient(
                            subscriber_id=r.subscriber_id, email=r.email, name=r.name,
                            attributes_json=r.attributes_json,
                        )
                    )  # fmt: skip
                    if len(pending) >= self._batch_size:
                        batch_number += 1
                        if not await self._publish(campaign, content, batch_number, pending):
                            stream.cancel()
                            return
                        pending = []
            if pending:
                batch_number += 1
                if not await self._publish(campaign, content, batch_number, pending):
                    return
            await self._store.finish_fanout(campaign_id)
            span.set_attribute("mailblast.batches", batch_number)
            log.info("fan-out complete", campaign_id=campaign_id, batches=batch_number)

    async def _publish(
        self,
        campaign: CampaignRow,
        content: events_pb2.MessageContent,
        batch_number: int,
        recipients: list[events_pb2.BatchRecipient],
    ) -> bool:
        # A paused or cancelled campaign hands out nothing more.
        current = await self._store.get(campaign.organization_id, campaign.id)
        if current is None or current.state != "sending":
            log.info("fan-out stopped", campaign_id=campaign.id, state=current and current.state)
            return False
        created = Timestamp()
        created.GetCurrentTime()
        batch = events_pb2.SendBatch(
            organization_id=campaign.organization_id,
            campaign_id=campaign.id,
            batch_number=batch_number,
            content=content,
            recipients=recipients,
            created_at=created,
        )
        with tracer.start_as_current_span(
            "campaign.publish_batch",
            attributes={"mailblast.campaign_id": campaign.id, "mailblast.batch": batch_number,
                        "mailblast.recipients": len(recipients)},
        ):  # fmt: skip
            await bus.publish(self._js, bus.SUBJECT_SEND_BATCH, batch, msg_id=batch_msg_id(campaign.id, batch_number))
        await self._store.record_batch(campaign.id, batch_number, recipients[-1].subscriber_id, len(recipients))
        return True
