"""What the sender asks other services just before delivering: is the campaign still sending, who is suppressed."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from mailblast.v1 import campaigns_pb2, campaigns_pb2_grpc, lists_pb2, lists_pb2_grpc

from services.common.identity import Principal, reset_principal, set_principal
from services.common.log import get_logger

log = get_logger(__name__)

SERVICE = "sender"
CALL_TIMEOUT_SECONDS = 10.0

# What the sender does with a campaign's batch, by the campaign's state.
GO = "go"
PAUSED = "paused"
CANCELLED = "cancelled"

_VERDICTS = {
    campaigns_pb2.CAMPAIGN_STATE_PAUSED: PAUSED,
    campaigns_pb2.CAMPAIGN_STATE_CANCELLED: CANCELLED,
}


@contextmanager
def acting_for(organization_id: int) -> Iterator[None]:
    """Make outgoing calls carry the sender's identity acting for one organisation."""
    token = set_principal(Principal(organization_id=organization_id, scopes=("read",), service=SERVICE))
    try:
        yield
    finally:
        reset_principal(token)


class CampaignStates:
    """Asks the campaigns service whether a campaign may be delivered, remembering each answer briefly."""

    def __init__(self, channel: grpc.aio.Channel | None, ttl_seconds: float = 2.0) -> None:
        self._stub = campaigns_pb2_grpc.CampaignsServiceStub(channel) if channel is not None else None
        self._ttl = ttl_seconds
        self._cache: dict[tuple[int, int], tuple[float, str]] = {}
        self._warned = False

    async def verdict(self, organization_id: int, campaign_id: int) -> str:
        """GO, PAUSED or CANCELLED (an unknown campaign counts as cancelled); errors propagate."""
        if self._stub is None:
            if not self._warned:
                self._warned = True
                log.warning("no campaigns address (SENDER_CAMPAIGNS_ADDR): pause and cancel unchecked")
            return GO
        key = (organization_id, campaign_id)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            with acting_for(organization_id):
                campaign = await self._stub.GetCampaign(
                    campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), timeout=CALL_TIMEOUT_SECONDS
                )
            verdict = _VERDICTS.get(campaign.state, GO)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            log.warning("campaign unknown to the campaigns service; its batch is dropped", campaign_id=campaign_id)
            verdict = CANCELLED
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + self._ttl, verdict)
        return verdict


class SuppressionCheck:
    """Asks the lists service which addresses of an organisation must not be sent to."""

    def __init__(self, channel: grpc.aio.Channel | None) -> None:
        self._stub = lists_pb2_grpc.ListsServiceStub(channel) if channel is not None else None
        self._warned = False

    async def suppressed(self, organization_id: int, emails: Sequence[str]) -> dict[str, str]:
        """The suppressed ones among `emails` (as given) with their reasons; errors propagate."""
        if not emails:
            return {}
        if self._stub is None:
            if not self._warned:
                self._warned = True
                log.warning("no lists address (SENDER_LISTS_ADDR): suppression unchecked at send time")
            return {}
        with acting_for(organization_id):
            reply = await self._stub.CheckSuppressed(
                lists_pb2.CheckSuppressedRequest(emails=list(emails)), timeout=CALL_TIMEOUT_SECONDS
            )
        return {s.email: s.reason for s in reply.suppressed}
