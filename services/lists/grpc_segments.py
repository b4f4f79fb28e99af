"""The ListsSegmentsService servicer: saved condition trees, protobuf in and out."""

from __future__ import annotations

import json
from collections.abc import Iterable

from mailblast.v1 import lists_segments_pb2, lists_segments_pb2_grpc

from services.common.audit import AuditTrail
from services.common.errors import InvalidArgument, NotFound
from services.common.identity import require_scope
from services.lists import segments
from services.lists.grpc_convert import one_line, subscriber, ts
from services.lists.segments import Compiled
from services.lists.store import ListsStore
from services.lists.store_fields import FieldStore
from services.lists.store_segments import SegmentRow, SegmentStore
from services.lists.store_subscribers import SubscriberStore


def _segment(row: SegmentRow) -> lists_segments_pb2.Segment:
    return lists_segments_pb2.Segment(
        id=row.id,
        name=row.name,
        conditions_json=json.dumps(row.conditions, ensure_ascii=False),
        created_at=ts(row.created_at),
        updated_at=ts(row.updated_at),
    )


class SavedSegments:
    """The organisation's saved segments compiled to SQL, for whoever targets them (recipients, exports)."""

    def __init__(self, store: SegmentStore, fields: FieldStore) -> None:
        self._store = store
        self._fields = fields

    async def compiled(self, org: int, segment_ids: Iterable[int]) -> list[Compiled]:
        """Compile the organisation's saved segments; another organisation's ids are NOT_FOUND."""
        wanted = sorted(set(segment_ids))
        rows = await self._store.segments(org, wanted)
        missing = set(wanted) - {r.id for r in rows}
        if missing:
            raise NotFound("no segment %(segment)s in your organisation", segment=", ".join(map(str, sorted(missing))))
        defs = await self._fields.defs(org)
        return [segments.compile_tree(r.conditions, defs) for r in rows]


class SegmentsServicer(lists_segments_pb2_grpc.ListsSegmentsServiceServicer):
    """Saved condition trees, previewed and usable as campaign targets."""

    def __init__(
        self, store: SegmentStore, saved: SavedSegments, fields: FieldStore, lists: ListsStore,
        subscribers: SubscriberStore, audit: AuditTrail,
    ) -> None:  # fmt: skip
        self._store = store
        self._saved = saved
        self._fields = fields
        self._lists = lists
        self._subscribers = subscribers
        self._audit = audit

    async def _check_tree(self, org: int, conditions_json: str) -> tuple[dict, Compiled]:
        tree = segments.parse(conditions_json)
        compiled = segments.compile_tree(tree, await self._fields.defs(org))
        if compiled.list_ids:
            missing = compiled.list_ids - await self._lists.own_list_ids(org, sorted(compiled.list_ids))
            if missing:
                raise NotFound("no list %(list)s in your organisation", list=", ".join(map(str, sorted(missing))))
        return tree, compiled

    async def CreateSegment(self, request, context):
        """Save a condition tree."""
        principal = require_scope("send")
        name = one_line(request.name.strip(), "the segment name", 200)
        if not name:
            raise InvalidArgument("the segment name must not be empty")
        tree, _ = await self._check_tree(principal.organization_id, request.conditions_json)
        created = await self._store.create(principal.organization_id, name, tree)
        await self._audit.record("segment.created", f"segment:{created.id}", {"name": name}, context=context)
        return _segment(created)

    async def GetSegment(self, request, context):
        """One segment."""
        principal = require_scope("read")
        found = await self._store.segments(principal.organization_id, [request.segment_id])
        if not found:
            raise NotFound("no segment %(segment)s in your organisation", segment=request.segment_id)
        return _segment(found[0])

    async def ListSegments(self, request, context):
        """The organisation's segments."""
        principal = require_scope("read")
        return lists_segments_pb2.ListSegmentsResponse(
            segments=[_segment(r) for r in await self._store.segments(principal.organization_id)]
        )

    async def UpdateSegment(self, request, context):
        """Replace a segment."""
        principal = require_scope("send")
        name = one_line(request.segment.name.strip(), "the segment name", 200)
        tree, _ = await self._check_tree(principal.organization_id, request.segment.conditions_json)
        updated = await self._store.update(principal.organization_id, request.segment_id, name, tree)
        await self._audit.record("segment.updated", f"segment:{request.segment_id}", {"name": name}, context=context)
        return _segment(updated)

    async def DeleteSegment(self, request, context):
        """Remove a segment."""
        principal = require_scope("send")
        await self._store.delete(principal.organization_id, request.segment_id)
        await self._audit.record("segment.deleted", f"segment:{request.segment_id}", context=context)
        return lists_segments_pb2.DeleteSegmentResponse()

    async def PreviewSegment(self, request, context):
        """How many match, and a sample."""
        principal = require_scope("read")
        org = principal.organization_id
        if request.segment_id:
            compiled = (await self._saved.compiled(org, [request.segment_id]))[0]
        else:
            _, compiled = await self._check_tree(org, request.conditions_json)
        size = min(request.sample_size or 10, 100)
        sample, _ = await self._subscribers.search(org, compiled, 0, size, estimate=False)
        return lists_segments_pb2.PreviewSegmentResponse(
            count=await self._subscribers.count(org, compiled), sample=[subscriber(s) for s in sample]
        )
