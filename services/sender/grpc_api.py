"""SenderService over gRPC: ledger look-ups, scoped by the caller's organisation."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from mailblast.v1 import sender_pb2, sender_pb2_grpc

from services.common.errors import NotFound
from services.common.identity import require_scope
from services.sender import convert
from services.sender.store import DeliveryStore


class SenderServicer(sender_pb2_grpc.SenderServiceServicer):
    """Answers what the senders did for one recipient of one campaign."""

    def __init__(self, store: DeliveryStore) -> None:
        self._store = store

    async def GetDelivery(
        self, request: sender_pb2.GetDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> sender_pb2.Delivery:
        """Return the ledger entry; another organisation's is NOT_FOUND."""
        principal = require_scope("read")
        row = await self._store.get(principal.organization_id, request.campaign_id, request.subscriber_id)
        if row is None:
            raise NotFound(
                "no delivery for subscriber %(subscriber)s of campaign %(campaign)s",
                subscriber=request.subscriber_id,
                campaign=request.campaign_id,
            )
        return convert.delivery(row)


def register(store: DeliveryStore) -> Callable[[grpc.aio.Server], list[str]]:
    """A registration function for rpc.start_grpc_server."""

    def _register(server: grpc.aio.Server) -> list[str]:
        sender_pb2_grpc.add_SenderServiceServicer_to_server(SenderServicer(store), server)
        return [sender_pb2.DESCRIPTOR.services_by_name["SenderService"].full_name]

    return _register
