"""Fan-out: take a campaign's recipients from its audience and hand them to the senders in batches.

The fan-out knows neither gRPC nor NATS: `service.py` gives it an Audience (recipients.py: lists'
StreamRecipients) and a Batches (batches.py: SendBatch on JetStream).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from services.campaigns.states import CampaignState
from services.campaigns.store import CampaignRow, CampaignStore
from services.common.identity import Principal, reset_principal, set_principal
from services.common.log import get_logger

log = get_logger(__name__)
tracer = trace.get_tracer("mailblast.campaigns")


def batch_msg_id(campaign_id: int, batch_number: int) -> str:
    """The de-duplication id of a batch: the same for a batch republished after a restart."""
    return f"send-{campaign_id}-{batch_number}"


@dataclass(frozen=True)
class Recipient:
    """One subscriber a campaign goes to."""

    subscriber_id: int
    email: str
    name: str
    attributes_json: str


class Audience(Protocol):
    """Where a campaign's recipients come from."""

    def recipients(self, campaign: CampaignRow, chunk_size: int) -> AsyncGenerator[Sequence[Recipient], None]:
        """The campaign's lists and segments after its last_subscriber_id, in subscriber order, chunk by chunk."""
        ...


class Batches(Protocol):
    """Where batches of recipients go: the senders."""

    async def publish(self, campaign: CampaignRow, batch_number: int, recipients: Sequence[Recipient]) -> None:
        """Hand one batch over, once: a batch republished with the same number is dropped as a duplicate."""
        ...


class FanOut:
    """Runs one fan-out task per sending campaign."""

    def __init__(self, store: CampaignStore, audience: Audience, batches: Batches, batch_size: int) -> None:
        self._store = store
        self._audience = audience
        self._batches = batches
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
            if campaign is None or campaign.state != CampaignState.SENDING or campaign.fanout_complete:
                return
            # Measured only when both the campaign and its organisation say so (as they stand at the fan-out).
            if campaign.tracking and not await self._store.tracking_enabled(organization_id):
                campaign = dataclasses.replace(campaign, tracking=False)
            batch_number = campaign.published_batches
            pending: list[Recipient] = []
            chunks = self._audience.recipients(campaign, self._batch_size)
            # Closing the chunks stops the stream from the audience when the campaign stops mid-way.
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    for recipient in chunk:
                        pending.append(recipient)
                        if len(pending) >= self._batch_size:
                            batch_number += 1
                            if not await self._publish(campaign, batch_number, pending):
                                return
                            pending = []
            if pending:
                batch_number += 1
                if not await self._publish(campaign, batch_number, pending):
                    return
            await self._store.finish_fanout(campaign_id)
            span.set_attribute("mailblast.batches", batch_number)
            log.info("fan-out complete", campaign_id=campaign_id, batches=batch_number)

    async def _publish(self, campaign: CampaignRow, batch_number: int, recipients: list[Recipient]) -> bool:
        # A paused or cancelled campaign hands out nothing more.
        current = await self._store.get(campaign.organization_id, campaign.id)
        if current is None or current.state != CampaignState.SENDING:
            log.info("fan-out stopped", campaign_id=campaign.id, state=current and current.state)
            return False
        with tracer.start_as_current_span(
            "campaign.publish_batch",
            attributes={"mailblast.campaign_id": campaign.id, "mailblast.batch": batch_number,
                        "mailblast.recipients": len(recipients)},
        ):  # fmt: skip
            await self._batches.publish(campaign, batch_number, recipients)
        await self._store.record_batch(campaign.id, batch_number, recipients[-1].subscriber_id, len(recipients))
        return True
