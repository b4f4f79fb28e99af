"""The ListsPrivacyService servicer: a subscriber's personal data and its erasure, protobuf in and out."""

from __future__ import annotations

import json
from dataclasses import asdict

from mailblast.v1 import lists_privacy_pb2, lists_privacy_pb2_grpc

from services.common.audit import AuditTrail
from services.common.identity import require_scope
from services.common.log import get_logger
from services.lists.erasures import ErasureAnnouncer
from services.lists.privacy import json_default
from services.lists.store_privacy import PrivacyStore

log = get_logger(__name__)


class PrivacyServicer(lists_privacy_pb2_grpc.ListsPrivacyServiceServicer):
    """Everything held about one subscriber, and erasure."""

    def __init__(self, store: PrivacyStore, erasures: ErasureAnnouncer | None, audit: AuditTrail) -> None:
        self._store = store
        self._erasures = erasures
        self._audit = audit

    async def ExportSubscriberData(self, request, context):
        """Everything held about a subscriber, as JSON."""
        principal = require_scope("admin")
        data = await self._store.personal_data(principal.organization_id, request.subscriber_id)
        await self._audit.record("subscriber.data_exported", f"subscriber:{request.subscriber_id}", context=context)
        return lists_privacy_pb2.ExportSubscriberDataResponse(
            json=json.dumps(asdict(data), ensure_ascii=False, default=json_default, indent=2)
        )

    async def EraseSubscriber(self, request, context):
        """Delete every trace of a subscriber but a keyed hash on the suppression list."""
        principal = require_scope("admin")
        hashed = await self._store.erase(principal.organization_id, request.subscriber_id)
        log.info("subscriber erased", organization_id=principal.organization_id, subscriber_id=request.subscriber_id)
        await self._audit.record(
            "subscriber.erased", f"subscriber:{request.subscriber_id}", {"email_hash": hashed}, context=context
        )
        if self._erasures is not None:
            # Committed with the erasure; announced now, or by the background retry if NATS is away.
            try:
                await self._erasures.publish_pending()
            except Exception:
                log.exception(
                    "erasure not announced yet; the background retry will", subscriber_id=request.subscriber_id
                )
                self._erasures.kick()
        return lists_privacy_pb2.EraseSubscriberResponse()
