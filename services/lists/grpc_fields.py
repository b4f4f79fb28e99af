"""The ListsFieldsService servicer: custom field definitions, protobuf in and out."""

from __future__ import annotations

from datetime import UTC, datetime

from mailblast.v1 import lists_fields_pb2, lists_fields_pb2_grpc

from services.common.audit import AuditTrail
from services.common.errors import InvalidArgument
from services.common.identity import require_scope
from services.lists import fields
from services.lists.grpc_convert import FIELD_TYPES, custom_field
from services.lists.store_fields import FieldStore


class FieldsServicer(lists_fields_pb2_grpc.ListsFieldsServiceServicer):
    """Typed custom fields of the organisation's subscribers."""

    def __init__(self, store: FieldStore, audit: AuditTrail) -> None:
        self._store = store
        self._audit = audit

    async def CreateField(self, request, context):
        """Define a typed custom field."""
        principal = require_scope("admin")
        try:
            key, label, type_, options = fields.check_definition(
                request.key, request.label, FIELD_TYPES.get(request.type, ""), list(request.options)
            )
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        created = await self._store.create_field(principal.organization_id, key, label, type_, options)
        await self._audit.record("field.created", f"field:{created.id}", {"key": key, "type": type_}, context=context)
        return custom_field(created, datetime.now(UTC))

    async def ListFields(self, request, context):
        """The organisation's custom fields."""
        principal = require_scope("read")
        defs = await self._store.defs(principal.organization_id)
        return lists_fields_pb2.ListFieldsResponse(
            fields=[custom_field(d) for d in sorted(defs.values(), key=lambda d: d.id)]
        )

    async def DeleteField(self, request, context):
        """Remove a field definition."""
        principal = require_scope("admin")
        key = await self._store.delete_field(principal.organization_id, request.field_id)
        await self._audit.record("field.deleted", f"field:{request.field_id}", {"key": key}, context=context)
        return lists_fields_pb2.DeleteFieldResponse()
