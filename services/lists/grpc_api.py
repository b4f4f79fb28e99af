"""The ListsService servicer: protobuf in and out, the work done by validation and the store."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import lists_pb2, lists_pb2_grpc

from services.common.audit import AuditTrail
from services.common.clock import Clock, SystemClock
from services.common.errors import InvalidArgument, NotFound
from services.common.identity import current_principal, require_scope
from services.common.log import get_logger
from services.lists import fields, validation
from services.lists.audience import AudienceStore
from services.lists.erasures import ErasureAnnouncer
from services.lists.grpc_audience import STATUS_VALUES, AudienceRpcs
from services.lists.imports import ImportRunner
from services.lists.store import ListsStore, MailingList, Subscriber

log = get_logger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
DEFAULT_CHUNK_SIZE = 500
MAX_CHUNK_SIZE = 5000

_STATUS = STATUS_VALUES


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _list(item: MailingList) -> lists_pb2.MailingList:
    return lists_pb2.MailingList(
        id=item.id,
        name=item.name,
        description=item.description,
        active_count=item.active_count,
        subscriber_count=item.subscriber_count,
        created_at=_ts(item.created_at),
    )


def _subscriber(s: Subscriber) -> lists_pb2.Subscriber:
    return lists_pb2.Subscriber(
        id=s.id,
        email=s.email,
        name=s.name,
        attributes_json=s.attributes_json,
        status=_STATUS.get(s.status, lists_pb2.SUBSCRIBER_STATUS_UNSPECIFIED),
        hard_bounce_count=s.hard_bounce_count,
        last_bounce_reason=s.last_bounce_reason,
        created_at=_ts(s.created_at),
        updated_at=_ts(s.updated_at),
    )


def _bounded(value: int, default: int, maximum: int, what: str) -> int:
    if value < 0:
        raise InvalidArgument("%(what)s must not be negative", what=what)
    return min(value or default, maximum)


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


class ListsServicer(AudienceRpcs, lists_pb2_grpc.ListsServiceServicer):
    """Mailing lists and subscribers over gRPC."""

    def __init__(
        self,
        store: ListsStore,
        audience: AudienceStore,
        imports: ImportRunner,
        js,
        internal_key: bytes,
        public_url: str = "",
        signup_rate_per_hour: int = 10,
        audit: AuditTrail | None = None,
        erasures: ErasureAnnouncer | None = None,
        confirm_window_seconds: float = 900.0,
        confirm_daily_cap: int = 3,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self.audit = audit or AuditTrail(None)
        self.erasures = erasures
        self.audience = audience
        self.imports = imports
        self.js = js
        self.internal_key = internal_key
        self.public_url = public_url
        self.signup_rate_per_hour = signup_rate_per_hour
        self.confirm_window = timedelta(seconds=confirm_window_seconds)
        self.confirm_daily_cap = confirm_daily_cap
        self.clock = clock or SystemClock()

    @staticmethod
    def _subscriber_pb(s: Subscriber) -> lists_pb2.Subscriber:
        return _subscriber(s)

    async def _own_list(self, organization_id: int, list_id: int) -> MailingList:
        found = await self._store.lists(organization_id, list_id)
        if not found:
            raise NotFound("no list %(list)s in your organisation", list=list_id)
        return found[0]

    async def CreateList(self, request: lists_pb2.CreateListRequest, context: grpc.aio.ServicerContext):
        """Create a list."""
        principal = require_scope("send")
        name, description = validation.check_list_fields(request.name, request.description)
        created = await self._store.create_list(principal.organization_id, name, description)
        log.info("list created", organization_id=principal.organization_id, list_id=created.id)
        return _list(created)

    async def GetList(self, request: lists_pb2.GetListRequest, context: grpc.aio.ServicerContext):
        """One list with its head counts."""
        principal = require_scope("read")
        return _list(await self._own_list(principal.organization_id, request.list_id))

    async def ListLists(self, request: lists_pb2.ListListsRequest, context: grpc.aio.ServicerContext):
        """All lists of the organisation."""
        principal = require_scope("read")
        found = await self._store.lists(principal.organization_id)
        return lists_pb2.ListListsResponse(lists=[_list(item) for item in found])

    async def AddSubscribers(self, request: lists_pb2.AddSubscribersRequest, context: grpc.aio.ServicerContext):
        """Validate every row, keep the good ones, report the bad ones."""
        principal = require_scope("send")
        rows = [validation.SubscriberRow(r.email, r.name, r.attributes_json) for r in request.subscribers]
        valid, problems = validation.check_rows(rows)
        await self._own_list(principal.organization_id, request.list_id)
        # Values of defined custom fields are checked and normalised on every write.
        defs = await self.audience.defs(principal.organization_id)
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
        size = _bounded(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, "page_size")
        after = _read_page_token(request.page_token, request.list_id)
        await self._own_list(principal.organization_id, request.list_id)
        # One more than asked tells whether another page follows.
        found = await self._store.list_subscribers_page(principal.organization_id, request.list_id, after, size + 1)
        page = found[:size]
        next_token = _page_token(request.list_id, page[-1].id) if len(found) > size else ""
        return lists_pb2.ListSubscribersResponse(subscribers=[_subscriber(s) for s in page], next_page_token=next_token)

    async def GetSubscriber(self, request: lists_pb2.GetSubscriberRequest, context: grpc.aio.ServicerContext):
        """One subscriber of the organisation."""
        principal = require_scope("read")
        found = await self._store.subscriber(principal.organization_id, request.subscriber_id)
        if found is None:
            raise NotFound("no subscriber %(subscriber)s in your organisation", subscriber=request.subscriber_id)
        return _subscriber(found)

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
        size = _bounded(request.chunk_size, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, "chunk_size")
        missing = set(list_ids) - await self._store.own_list_ids(principal.organization_id, list_ids)
        if missing:
            raise NotFound("no list %(list)s in your organisation", list=", ".join(map(str, sorted(missing))))
        compiled = await self.compile_segments(principal.organization_id, request.segment_ids)
        # An interrupted fan-out resumes after the last subscriber it handed out.
        after = max(0, request.after_subscriber_id)
        while True:
            # Suppressed addresses are never yielded, whatever their status says.
            chunk = await self.audience.recipients_after(principal.organization_id, list_ids, compiled, after, size)
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
