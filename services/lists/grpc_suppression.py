"""The ListsSuppressionService servicer: the organisation's suppression list, protobuf in and out."""

from __future__ import annotations

from mailblast.v1 import lists_pb2, lists_suppression_pb2, lists_suppression_pb2_grpc

from services.common.audit import AuditTrail
from services.common.errors import InvalidArgument, NotFound
from services.common.identity import current_principal, require_scope
from services.common.log import get_logger
from services.common.privacy import email_hash
from services.lists import validation
from services.lists.grpc_convert import csv_stream, export_encoding, one_line, page_token, read_page_token, ts
from services.lists.store_suppression import SuppressionRow, SuppressionStore
from services.lists.suppression import GIVEN_BY_HAND, SuppressionReason

log = get_logger(__name__)

MAX_CHECKED = 10_000
EXPORT_PAGE = 2000


def _suppression(row: SuppressionRow) -> lists_suppression_pb2.Suppression:
    return lists_suppression_pb2.Suppression(
        email=row.email or "", reason=row.reason, source=row.source, created_at=ts(row.created_at)
    )


class SuppressionServicer(lists_suppression_pb2_grpc.ListsSuppressionServiceServicer):
    """Addresses never sent to, organisation-wide."""

    def __init__(self, store: SuppressionStore, internal_key: bytes, audit: AuditTrail) -> None:
        self._store = store
        self._key = internal_key
        self._audit = audit

    async def AddSuppressions(self, request, context):
        """Suppress addresses by hand or from an import."""
        principal = require_scope("send")
        try:
            reason = SuppressionReason(request.reason or SuppressionReason.MANUAL)
        except ValueError:
            reason = None
        if reason not in GIVEN_BY_HAND:
            raise InvalidArgument("reason must be manual or import")
        good, errors = [], []
        for index, email in enumerate(request.emails):
            try:
                good.append(validation.check_email(email.strip()))
            except ValueError as exc:
                errors.append(lists_pb2.RowError(index=index, email=email, message=str(exc)))
        source = one_line(request.source or "console", "source", 200)
        added = await self._store.add(principal.organization_id, good, reason, source)
        # How many, never which: the addresses are personal data.
        detail = {"reason": str(reason), "source": source, "added": added}
        await self._audit.record(
            "suppression.added", f"organization:{principal.organization_id}", detail, context=context
        )
        return lists_suppression_pb2.AddSuppressionsResponse(added=added, errors=errors)

    async def ListSuppressions(self, request, context):
        """A page of the suppression list."""
        principal = require_scope("read")
        size = min(request.page_size or 100, 1000)
        found = await self._store.page(
            principal.organization_id, request.email_contains, request.reason, read_page_token(request.page_token),
            size + 1,
        )  # fmt: skip
        page = found[:size]
        return lists_suppression_pb2.ListSuppressionsResponse(
            suppressions=[_suppression(r) for r in page],
            next_page_token=page_token(page[-1].id) if len(found) > size else "",
        )

    async def RemoveSuppression(self, request, context):
        """Take an address off the suppression list (admins only)."""
        principal = require_scope("admin")
        removed = await self._store.remove(principal.organization_id, request.email)
        if not removed:
            raise NotFound("that address is not on your suppression list")
        log.info("suppression removed", organization_id=principal.organization_id, user_id=principal.user_id)
        hashed = email_hash(self._key, request.email)
        await self._audit.record("suppression.removed", f"suppression:{hashed}", context=context)
        return lists_suppression_pb2.RemoveSuppressionResponse(removed=removed)

    async def ExportSuppressions(self, request, context):
        """The suppression list as CSV."""
        principal = require_scope("read")
        encoding = export_encoding(request.encoding)
        await self._audit.record(
            "suppression.exported", f"organization:{principal.organization_id}", {"encoding": encoding},
            context=context,
        )  # fmt: skip

        async def rows():
            after = 0
            while True:
                page = await self._store.page(principal.organization_id, "", "", after, EXPORT_PAGE)
                if not page:
                    return
                yield ([r.email or "(erased)", r.reason, r.source, r.created_at.isoformat()] for r in page)
                after = page[-1].id

        async for chunk in csv_stream(rows(), ["email", "reason", "source", "created_at"], encoding):
            yield chunk

    async def CheckSuppressed(self, request, context):
        """Which addresses must not be sent to."""
        principal = current_principal()
        if not principal.service:
            principal = require_scope("read")
        if not principal.organization_id:
            raise InvalidArgument("the caller identity names no organisation")
        if len(request.emails) > MAX_CHECKED:
            raise InvalidArgument("ask about at most 10000 addresses per call")
        found = await self._store.check(principal.organization_id, list(request.emails))
        out = []
        for email in request.emails:
            hit = found.get(email_hash(self._key, email))
            if hit:
                out.append(
                    lists_suppression_pb2.Suppression(
                        email=email, reason=hit.reason, source=hit.source, created_at=ts(hit.created_at)
                    )
                )
        return lists_suppression_pb2.CheckSuppressedResponse(suppressed=out)
