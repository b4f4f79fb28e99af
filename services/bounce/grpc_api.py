"""The BounceService servicer: protobuf in and out, scoped by the caller's organisation."""

from __future__ import annotations

import grpc
from mailblast.v1 import bounce_pb2, bounce_pb2_grpc

from services.bounce import convert
from services.bounce.store import BounceRow, BounceStore
from services.common.errors import InvalidArgument
from services.common.identity import require_scope


def _record(row: BounceRow) -> bounce_pb2.BounceRecord:
    record = bounce_pb2.BounceRecord(
        campaign_id=row.campaign_id,
        subscriber_id=row.subscriber_id,
        email=row.email,
        kind=convert.kind_to_proto(row.kind),
        source=convert.source_to_proto(row.source),
        status=row.status,
        diagnostic=row.diagnostic,
    )
    if row.received_at is not None:
        record.received_at.FromDatetime(row.received_at)
    return record


class BounceServicer(bounce_pb2_grpc.BounceServiceServicer):
    """Answers for the bounces recorded for the caller's campaigns."""

    def __init__(self, store: BounceStore) -> None:
        self._store = store

    async def ListBounces(
        self, request: bounce_pb2.ListBouncesRequest, context: grpc.aio.ServicerContext
    ) -> bounce_pb2.ListBouncesResponse:
        """List one campaign's bounces; another organisation's campaign lists as empty."""
        principal = require_scope("read")
        if request.campaign_id <= 0:
            raise InvalidArgument("campaign_id must be a positive campaign id")
        rows = await self._store.list_for_campaign(principal.organization_id, request.campaign_id)
        return bounce_pb2.ListBouncesResponse(bounces=[_record(row) for row in rows])
