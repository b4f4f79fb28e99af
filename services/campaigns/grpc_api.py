"""CampaignsService: protobuf in and out, domain errors raised; the work is in store and fanout."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable

import grpc
from email_validator import EmailNotValidError, validate_email
from mailblast.v1 import (
    auth_pb2_grpc,
    campaigns_pb2,
    campaigns_pb2_grpc,
    events_pb2,
    lists_pb2,
    lists_pb2_grpc,
    lists_segments_pb2,
    lists_segments_pb2_grpc,
)
from opentelemetry import trace

from services.campaigns import convert
from services.campaigns.content import CampaignDraft, check_limits, validate_draft
from services.campaigns.domains import check_alignment
from services.campaigns.fanout import FanOut
from services.campaigns.schedule import check_schedule
from services.campaigns.states import CampaignState
from services.campaigns.store import CampaignRow, CampaignStore
from services.campaigns.store_domains import DomainStore
from services.common import tracking
from services.common.audit import AuditTrail
from services.common.clock import Clock, SystemClock
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Problem
from services.common.identity import Principal, require_scope, require_service
from services.common.log import get_logger
from services.common.templating import SAMPLE_FIELDS

log = get_logger(__name__)

tracer = trace.get_tracer("mailblast.campaigns")


def to_proto(row: CampaignRow) -> campaigns_pb2.Campaign:
    """The wire form of a stored campaign."""
    campaign = campaigns_pb2.Campaign(
        id=row.id,
        name=row.name,
        state=convert.state_to_proto(row.state),
        list_ids=row.list_ids,
        segment_ids=row.segment_ids,
        from_name=row.from_name,
        from_address=row.from_address,
        reply_to=row.reply_to,
        subject=row.subject,
        html_body=row.html_body,
        text_body=row.text_body,
        fanout_complete=row.fanout_complete,
        counters=campaigns_pb2.CampaignCounters(
            total=row.total, queued=row.queued, sent=row.sent, deferred=row.deferred,
            bounced=row.bounced, failed=row.failed, suppressed=row.suppressed,
        ),
    )  # fmt: skip
    campaign.created_at.FromDatetime(row.created_at)
    if row.started_at:
        campaign.started_at.FromDatetime(row.started_at)
    if row.finished_at:
        campaign.finished_at.FromDatetime(row.finished_at)
    if row.scheduled_at:
        campaign.scheduled_at.FromDatetime(row.scheduled_at)
    campaign.schedule_time_zone = row.schedule_time_zone
    campaign.tracking = row.tracking
    campaign.tracked.CopyFrom(
        campaigns_pb2.TrackingCounters(
            opens_unique=row.opens_unique, opens_total=row.opens_total,
            clicks_unique=row.clicks_unique, clicks_total=row.clicks_total,
        )
    )  # fmt: skip
    return campaign


class CampaignsServicer(campaigns_pb2_grpc.CampaignsServiceServicer):
    """Campaign CRUD and sending, always within the caller's organisation."""

    def __init__(
        self,
        store: CampaignStore,
        fanout: FanOut,
        lists: lists_pb2_grpc.ListsServiceStub,
        lists_segments: lists_segments_pb2_grpc.ListsSegmentsServiceStub,
        send_mail: Callable[[events_pb2.TransactionalMessage], Awaitable[None]] | None = None,
        auth: auth_pb2_grpc.AuthServiceStub | None = None,
        *,
        domains: DomainStore | None = None,
        platform_domain: str = "",
        clock: Clock | None = None,
        time_zone: str = "Asia/Tokyo",
        tracking_key: bytes = b"",
    ) -> None:
        self._store = store
        self._domains = domains
        self._platform_domain = platform_domain
        self._fanout = fanout
        self._lists = lists
        self._lists_segments = lists_segments
        self._send_mail = send_mail
        self._audit_trail = AuditTrail(auth)
        self._clock = clock or SystemClock()
        self._time_zone = time_zone
        self._tracking_key = tracking_key

    async def _get(self, organization_id: int, campaign_id: int) -> CampaignRow:
        row = await self._store.get(organization_id, campaign_id)
        if row is None:
            raise NotFound("campaign %(campaign)s not found", campaign=campaign_id)
        return row

    async def _aligned(self, organization_id: int, from_address: str) -> None:
        """Refuse a From that is not on a verified sending domain of the organisation (nor the platform's)."""
        verified = await self._domains.verified_domains(organization_id) if self._domains else set()
        check_alignment(from_address, verified, self._platform_domain)

    async def _checked_draft(self, request, organization_id: int) -> CampaignDraft:
        """The request's draft, validated, with every list and segment it names found in the organisation."""
        # In a thread: trying the templates within their limits may take up to the render time limit.
        draft = await asyncio.to_thread(
            validate_draft,
            CampaignDraft(
                name=request.name, list_ids=tuple(request.list_ids), from_name=request.from_name,
                from_address=request.from_address, reply_to=request.reply_to, subject=request.subject,
                html_body=request.html_body, text_body=request.text_body,
                segment_ids=tuple(request.segment_ids), tracking=request.tracking,
            ),
        )  # fmt: skip
        checks = [("list", i, self._lists.GetList, lists_pb2.GetListRequest(list_id=i)) for i in draft.list_ids]
        checks += [
            ("segment", i, self._lists_segments.GetSegment, lists_segments_pb2.GetSegmentRequest(segment_id=i))
            for i in draft.segment_ids
        ]
        for kind, object_id, call, request_ in checks:
            try:
                await call(request_, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and kind == "list":
                    raise NotFound("list %(id)s not found", id=object_id) from None
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise NotFound("segment %(id)s not found", id=object_id) from None
                raise
        # After the look-ups: another organisation's list is NOT_FOUND whatever the From says.
        try:
            await self._aligned(organization_id, draft.from_address)
        except Problem as exc:
            raise InvalidArgument.of(exc, "from_address: ") from None
        return draft

    async def CreateCampaign(self, request, context):
        principal = require_scope("send")
        draft = await self._checked_draft(request, principal.organization_id)
        return to_proto(await self._store.create(principal.organization_id, draft))

    async def UpdateCampaign(self, request, context):
        principal = require_scope("send")
        # Another organisation's campaign is NOT_FOUND before any validation says anything about it.
        row = await self._get(principal.organization_id, request.campaign_id)
        if row.state != CampaignState.DRAFT:
            raise FailedPrecondition(
                "campaign %(campaign)s is %(state)s; only a draft can be changed", campaign=row.id, state=row.state
            )
        draft = await self._checked_draft(request, principal.organization_id)
        updated = await self._store.update_draft(principal.organization_id, request.campaign_id, draft)
        if updated is None:
            # The send started (or the campaign was cancelled) between the read and the update.
            row = await self._get(principal.organization_id, request.campaign_id)
            raise FailedPrecondition(
                "campaign %(campaign)s is %(state)s; only a draft can be changed", campaign=row.id, state=row.state
            )
        return to_proto(updated)

    async def GetCampaign(self, request, context):
        principal = require_scope("read")
        campaign = to_proto(await self._get(principal.organization_id, request.campaign_id))
        for link, url, unique, total in await self._store.link_clicks(campaign.id):
            campaign.tracked.links.append(campaigns_pb2.LinkClicks(link=link, url=url, unique=unique, total=total))
        return campaign

    async def GetCampaignReport(self, request, context):
        principal = require_scope("read")
        row = await self._get(principal.organization_id, request.campaign_id)
        report = campaigns_pb2.CampaignReport()
        for hour, delivered, opened, clicked in await self._store.hourly_activity(row.id):
            entry = report.hours.add(delivered=delivered, opened=opened, clicked=clicked)
            entry.hour.FromDatetime(hour)
        for domain, delivered, bounced, opened, recipients in await self._store.domain_activity(row.id):
            report.domains.add(
                domain=domain, delivered=delivered, bounced=bounced, opened=opened, recipients=recipients
            )
        return report

    async def RecordTracking(self, request, context):
        require_service()
        if request.kind not in (tracking.OPEN, tracking.CLICK):
            raise InvalidArgument("kind %(kind)r is neither o (open) nor c (click)", kind=request.kind)
        event = tracking.read_token(self._tracking_key, request.kind, request.token)
        if event is None:
            raise InvalidArgument("the tracking token is not valid")
        row = await self._store.get(event.organization_id, event.campaign_id)
        if row is None:
            return campaigns_pb2.RecordTrackingResponse()
        machine = tracking.is_machine(request.user_agent)
        counted = await self._store.record_tracking(
            event.campaign_id, event.subscriber_id, event.link, event.url, human=not machine, now=self._clock.now()
        )
        return campaigns_pb2.RecordTrackingResponse(counted=counted, machine=machine)

    async def GetTrackingSettings(self, request, context):
        principal = require_scope("read")
        enabled = await self._store.tracking_enabled(principal.organization_id)
        return campaigns_pb2.TrackingSettings(tracking_enabled=enabled)

    async def UpdateTrackingSettings(self, request, context):
        principal = require_scope("admin")
        await self._store.set_tracking_enabled(principal.organization_id, request.tracking_enabled)
        await self._audit_trail.record(
            "campaigns.settings_changed", f"organization:{principal.organization_id}",
            {"tracking_enabled": request.tracking_enabled}, context=context,
        )  # fmt: skip
        return campaigns_pb2.TrackingSettings(tracking_enabled=request.tracking_enabled)

    async def ListCampaigns(self, request, context):
        principal = require_scope("read")
        rows = await self._store.list(principal.organization_id)
        return campaigns_pb2.ListCampaignsResponse(campaigns=[to_proto(r) for r in rows])

    async def _transition(
        self, campaign_id: int, allowed: tuple[CampaignState, ...], to: CampaignState, verb: str
    ) -> CampaignRow:
        principal = require_scope("send")
        before, after = await self._store.change_state(principal.organization_id, campaign_id, allowed, to)
        if before is None:
            raise NotFound("campaign %(campaign)s not found", campaign=campaign_id)
        if after is None:
            raise FailedPrecondition(
                "campaign %(campaign)s is %(state)s; only a %(allowed)s campaign can be %(action)s",
                campaign=campaign_id,
                state=before.state,
                allowed=" or ".join(allowed),
                action=verb,
            )
        return after

    async def _check_sendable(self, row: CampaignRow, fields: dict | None = None) -> None:
        """Refuse a campaign whose From no longer aligns, or whose templates break the render limits."""
        try:
            await self._aligned(row.organization_id, row.from_address)
        except Problem as exc:
            raise FailedPrecondition.of(exc, "campaign %(campaign)s cannot be sent: ", campaign=row.id) from None
        try:
            await asyncio.to_thread(check_limits, row.subject, row.text_body, row.html_body, fields or SAMPLE_FIELDS)
        except InvalidArgument as exc:
            raise FailedPrecondition.of(exc, "campaign %(campaign)s cannot be sent: ", campaign=row.id) from None

    async def SendCampaign(self, request, context):
        with tracer.start_as_current_span("campaign.send", attributes={"mailblast.campaign_id": request.campaign_id}):
            principal = require_scope("send")
            draft = await self._get(principal.organization_id, request.campaign_id)
            if draft.state == CampaignState.DRAFT:
                await self._check_sendable(draft)
            row = await self._transition(request.campaign_id, (CampaignState.DRAFT,), CampaignState.SENDING, "sent")
            self._fanout.start(row)
            await self._audit(context, "campaign.sent", row)
            return to_proto(row)

    async def _audit(self, context, action: str, row: CampaignRow) -> None:
        """Record who started a send in auth's audit log, whichever client (console, API, CLI) asked."""
        detail = {"name": row.name, "list_ids": row.list_ids, "segment_ids": row.segment_ids}
        await self._audit_trail.record(action, f"campaign:{row.id}", detail, context=context)

    async def PauseCampaign(self, request, context):
        paused = await self._transition(request.campaign_id, (CampaignState.SENDING,), CampaignState.PAUSED, "paused")
        return to_proto(paused)

    async def ResumeCampaign(self, request, context):
        row = await self._transition(request.campaign_id, (CampaignState.PAUSED,), CampaignState.SENDING, "resumed")
        self._fanout.start(row)
        return to_proto(row)

    async def ScheduleCampaign(self, request, context):
        principal = require_scope("send")
        row = await self._get(principal.organization_id, request.campaign_id)
        if not request.HasField("send_at"):
            raise InvalidArgument("send_at is missing: say when the campaign is to start")
        zone = request.time_zone or self._time_zone
        send_at = check_schedule(request.send_at.ToDatetime(dt.UTC), zone, self._clock.now())
        if row.state == "draft":
            await self._check_sendable(row)
        before, after = await self._store.schedule(principal.organization_id, request.campaign_id, send_at, zone)
        if before is None:
            raise NotFound("campaign %(campaign)s not found", campaign=request.campaign_id)
        if after is None:
            raise FailedPrecondition(
                "campaign %(campaign)s is %(state)s; only a draft or a scheduled campaign can be scheduled",
                campaign=request.campaign_id,
                state=before.state,
            )
        detail = {"scheduled_at": send_at.isoformat(), "time_zone": zone}
        await self._audit_trail.record("campaign.scheduled", f"campaign:{after.id}", detail, context=context)
        return to_proto(after)

    async def UnscheduleCampaign(self, request, context):
        principal = require_scope("send")
        before, after = await self._store.unschedule(principal.organization_id, request.campaign_id)
        if before is None:
            raise NotFound("campaign %(campaign)s not found", campaign=request.campaign_id)
        if after is None:
            raise FailedPrecondition(
                "campaign %(campaign)s is %(state)s; only a scheduled campaign can be unscheduled",
                campaign=request.campaign_id,
                state=before.state,
            )
        await self._audit_trail.record("campaign.unscheduled", f"campaign:{after.id}", {}, context=context)
        return to_proto(after)

    async def start_scheduled(self, row: CampaignRow) -> None:
        """Begin the fan-out of a campaign the scheduler claimed, and write its start to the audit log."""
        self._fanout.start(row)
        detail = {"name": row.name, "list_ids": row.list_ids, "segment_ids": row.segment_ids,
                  "scheduled_at": row.scheduled_at.isoformat() if row.scheduled_at else ""}  # fmt: skip
        actor = Principal(organization_id=row.organization_id, service="campaigns")
        await self._audit_trail.record("campaign.sent", f"campaign:{row.id}", detail, principal=actor)

    async def CancelCampaign(self, request, context):
        allowed = (CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.SENDING, CampaignState.PAUSED)
        return to_proto(await self._transition(request.campaign_id, allowed, CampaignState.CANCELLED, "cancelled"))

    async def SendTest(self, request, context):
        principal = require_scope("send")
        row = await self._get(principal.organization_id, request.campaign_id)
        try:
            to_address = validate_email(request.to_address.strip(), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise InvalidArgument(
                "to_address %(address)r is not an email address: %(reason)s",
                address=request.to_address,
                reason=str(exc),
            ) from None
        fields: dict = {}
        if request.variables_json:
            try:
                fields = json.loads(request.variables_json)
            except ValueError:
                raise InvalidArgument("variables_json is not JSON") from None
            if not isinstance(fields, dict):
                raise InvalidArgument("variables_json must be a JSON object")
        fields.setdefault("email", to_address)
        await self._check_sendable(row, fields)
        if self._send_mail is None:
            raise FailedPrecondition("this campaigns service cannot send test messages (no message bus)")
        message = events_pb2.TransactionalMessage(
            organization_id=principal.organization_id,
            message_key=f"campaigns.test.{row.id}.{uuid.uuid4().hex}",
            to_address=to_address,
            to_name=str(fields.get("name", "")),
            content=events_pb2.MessageContent(
                from_name=row.from_name, from_address=row.from_address, reply_to=row.reply_to,
                subject=row.subject, html_body=row.html_body, text_body=row.text_body,
            ),
            variables_json=json.dumps(fields, ensure_ascii=False),
            category="campaigns.test",
        )  # fmt: skip
        await self._send_mail(message)
        return campaigns_pb2.SendTestResponse(message_key=message.message_key)
