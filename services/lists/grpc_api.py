"""The ListsService servicer: lists and subscribers, protobuf in and out, the work done by validation and the stores.

The audience's sub-domains have their own servicers (grpc_fields, grpc_imports, grpc_segments,
grpc_suppression, grpc_signup, grpc_privacy), all served by the lists process.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator

import grpc
from mailblast.v1 import lists_pb2, lists_pb2_grpc

from services.common.errors import InvalidArgument, NotFound, Problem
from services.common.identity import current_principal, require_scope
from services.common.log import get_logger
from services.lists import convert, fields, segments, validation
from services.lists.grpc_convert import bounded, mailing_list, page_token, read_page_token, subscriber, ts
from services.lists.grpc_segments import SavedSegments
from services.lists.segments import Compiled
from services.lists.store import ListsStore
from services.lists.store_fields import FieldStore
from services.lists.store_subscribers import SubscriberStore

log = get_logger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_CHUNK_SIZE = 500
MAX_CHUNK_SIZE = 5000


def _page_token(list_id: int, after: int) -> str:
    return base64.urlsafe_b64encode(f"{list_id}:{after}".encode()).decode().rstrip("=")


def _read_page_token(token: str, list_id: int) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        token_list, after = (int(part) for part in text.split(":"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this service gave out; start again without it") from None
    if token_list != list_id:
        raise InvalidArgument("page_token belongs to another list; start again without it")
    return after


class ListsServicer(lists_pb2_grpc.ListsServiceServicer):
    """Mailing lists and subscribers over gRPC."""

    def __init__(
        self, store: ListsStore, subscribers: SubscriberStore, fields_: FieldStore, saved: SavedSegments
    ) -> None:
        self._store = store
        self._subscribers = subscribers
        self._fields = fields_
        self._saved = saved

    async def CreateList(self, request: lists_pb2.CreateListRequest, context: grpc.aio.ServicerContext):
        """Create a list."""
        principal = require_scope("send")
        name, description = validation.check_list_fields(request.name, request.description)
        created = await self._store.create_list(principal.organization_id, name, description)
        log.info("list created", organization_id=principal.organization_id, list_id=created.id)
        return mailing_list(created)

    async def GetList(self, request: lists_pb2.GetListRequest, context: grpc.aio.ServicerContext):
        """One list with its head counts."""
        principal = require_scope("read")
        return mailing_list(await self._store.own_list(principal.organization_id, request.list_id))

    async def ListLists(self, request: lists_pb2.ListListsRequest, context: grpc.aio.ServicerContext):
        """All lists of the organisation."""
        principal = require_scope("read")
        found = await self._store.lists(principal.organization_id)
        return lists_pb2.ListListsResponse(lists=[mailing_list(item) for item in found])

    async def AddSubscribers(self, request: lists_pb2.AddSubscribersRequest, context: grpc.aio.ServicerContext):
        """Validate every row, keep the good ones, report the bad ones."""
        principal = require_scope("send")
        rows = [validation.SubscriberRow(r.email, r.name, r.attributes_json) for r in request.subscribers]
        valid, problems = validation.check_rows(rows)
        await self._store.own_list(principal.organization_id, request.list_id)
        # Values of defined custom fields are checked and normalised on every write.
        defs = await self._fields.defs(principal.organization_id)
        if defs:
            checked = []
            for v in valid:
                try:
                    checked.append(
                        validation.ValidSubscriber(
                            v.index, v.email, v.name, fields.check_values(defs, v.attributes_json)
                        )
                    )
                except ValueError as exc:
                    problems.append(validation.RowProblem(v.index, v.email, str(exc)))
            valid = checked
            problems.sort(key=lambda p: p.index)
        result = await self._store.add_subscribers(principal.organization_id, request.list_id, valid)
        log.info(
            "subscribers added",
            organization_id=principal.organization_id,
            list_id=request.list_id,
            added=result.added,
            updated=result.updated,
            refused=len(problems),
        )
        return lists_pb2.AddSubscribersResponse(
            added=result.added,
            updated=result.updated,
            errors=[lists_pb2.RowError(index=p.index, email=p.email, message=p.message) for p in problems],
        )

    async def ListSubscribers(self, request: lists_pb2.ListSubscribersRequest, context: grpc.aio.ServicerContext):
        """One page of a list's subscribers by id."""
        principal = require_scope("read")
        size = bounded(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, "page_size")
        after = _read_page_token(request.page_token, request.list_id)
        await self._store.own_list(principal.organization_id, request.list_id)
        # One more than asked tells whether another page follows.
        found = await self._store.list_subscribers_page(principal.organization_id, request.list_id, after, size + 1)
        page = found[:size]
        next_token = _page_token(request.list_id, page[-1].id) if len(found) > size else ""
        return lists_pb2.ListSubscribersResponse(subscribers=[subscriber(s) for s in page], next_page_token=next_token)

    async def GetSubscriber(self, request: lists_pb2.GetSubscriberRequest, context: grpc.aio.ServicerContext):
        """One subscriber of the organisation."""
        principal = require_scope("read")
        found = await self._store.subscriber(principal.organization_id, request.subscriber_id)
        if found is None:
            raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=request.subscriber_id)
        return subscriber(found)

    async def StreamRecipients(
        self, request: lists_pb2.StreamRecipientsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lists_pb2.RecipientChunk]:
        """Stream the active subscribers of the lists in chunks, each once, by id."""
        principal = current_principal()
        # Services (campaigns) relay the organisation they work for; people need the read scope.
        if not principal.service:
            principal = require_scope("read")
        if not principal.organization_id:
            raise InvalidArgument("the caller identity names no organisation")
        list_ids = sorted(set(request.list_ids))
        if not list_ids and not request.segment_ids:
            raise InvalidArgument("give at least one list id or segment id")
        size = bounded(request.chunk_size, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, "chunk_size")
        missing = set(list_ids) - await self._store.own_list_ids(principal.organization_id, list_ids)
        if missing:
            raise NotFound("no list %(list)s in your organisation", list=", ".join(map(str, sorted(missing))))
        compiled = await self._saved.compiled(principal.organization_id, request.segment_ids)
        # An interrupted fan-out resumes after the last subscriber it handed out.
        after = max(0, request.after_subscriber_id)
        while True:
            # Suppressed addresses are never yielded, whatever their status says.
            chunk = await self._subscribers.recipients_after(principal.organization_id, list_ids, compiled, after, size)
            if not chunk:
                return
            yield lists_pb2.RecipientChunk(
                recipients=[
                    lists_pb2.Recipient(
                        subscriber_id=r.subscriber_id,
                        email=r.email,
                        name=r.name,
                        attributes_json=r.attributes_json,
                    )
                    for r in chunk
                ]
            )
            if len(chunk) < size:
                return
            after = chunk[-1].subscriber_id

    async def SearchSubscribers(self, request, context):
        """Filter, keyset-page and estimate the organisation's subscribers."""
        principal = require_scope("read")
        org = principal.organization_id
        size = min(request.page_size or 100, 1000)
        after = read_page_token(request.page_token)
        conditions: list[dict] = []
        if request.email_prefix:
            conditions.append({"field": "email", "op": "starts_with", "value": request.email_prefix})
        if request.email_contains:
            conditions.append({"field": "email", "op": "contains", "value": request.email_contains})
        if request.name_contains:
            conditions.append({"field": "name", "op": "contains", "value": request.name_contains})
        if request.status:
            conditions.append({"field": "status", "op": "eq", "value": str(convert.status(request.status) or "?")})
        if request.list_id:
            await self._store.own_list(org, request.list_id)
            conditions.append({"field": "list", "op": "eq", "value": request.list_id})
        if bool(request.field_key) != bool(request.field_value):
            raise InvalidArgument("give both field_key and field_value, or neither")
        if request.field_key:
            conditions.append({"field": "custom", "key": request.field_key, "op": "eq", "value": request.field_value})
        defs = await self._fields.defs(org)
        if conditions:
            where = segments.compile_tree({"match": "all", "conditions": conditions}, defs)
        else:
            where = Compiled(segments.sql.SQL("TRUE"), [])
        found, total = await self._subscribers.search(org, where, after, size + 1, estimate=not after)
        page = found[:size]
        return lists_pb2.SearchSubscribersResponse(
            subscribers=[subscriber(s) for s in page],
            next_page_token=page_token(page[-1].id) if len(found) > size else "",
            total_estimate=total,
        )

    async def UpdateSubscriber(self, request, context):
        """Change a subscriber's name, fields or status."""
        principal = require_scope("send")
        name = attributes = None
        try:
            if request.HasField("name"):
                name = validation.check_name(request.name)
            if request.HasField("attributes_json"):
                raw = json.loads(request.attributes_json or "{}")
                if not isinstance(raw, dict):
                    raise Problem("attributes_json must be a JSON object")
                kept = {k: v for k, v in raw.items() if v is not None}
                defs = await self._fields.defs(principal.organization_id)
                checked = json.loads(fields.check_values(defs, validation.check_attributes(json.dumps(kept))))
                attributes = json.dumps({**{k: None for k, v in raw.items() if v is None}, **checked})
        except ValueError as exc:
            raise InvalidArgument.of(exc) from None
        status = convert.status(request.status) if request.status else None
        if request.status and status is None:
            raise InvalidArgument("unknown status")
        updated = await self._subscribers.update(
            principal.organization_id, request.subscriber_id, name, attributes, status, request.reason[:500]
        )
        return subscriber(updated)

    async def ListSubscriberEvents(self, request, context):
        """A subscriber's status history."""
        principal = require_scope("read")
        if await self._store.subscriber(principal.organization_id, request.subscriber_id) is None:
            raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=request.subscriber_id)
        events = await self._subscribers.events(principal.organization_id, request.subscriber_id)
        return lists_pb2.ListSubscriberEventsResponse(
            events=[
                lists_pb2.SubscriberEvent(
                    old_status=e.old_status or "",
                    new_status=e.new_status,
                    cause=e.cause,
                    detail=e.detail,
                    occurred_at=ts(e.occurred_at),
                )
                for e in events
            ]
        )
