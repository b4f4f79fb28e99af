"""Lists and campaigns pages: create, upload CSV, subscribers; compose, preview, test, send, live progress."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import grpc
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from mailblast.v1 import campaigns_pb2, lists_imports_pb2, lists_pb2, lists_segments_pb2
from markupsafe import escape

from services.common import templating
from services.common.templating import RenderBudget, TemplateLimitExceeded
from services.gateway import labels, report, statuses
from services.gateway.clients import BackendError, backends, call
from services.gateway.explanations import explain
from services.gateway.labels import label
from services.gateway.numbers import form_ids
from services.gateway.security import PREVIEW_CSP, requires
from services.gateway.timezones import console_zone, local, offered_zones, viewer_zone, zone_or_none

bp = Blueprint("mail", __name__)

UPLOAD_CHUNK = 1024 * 1024
_FORM_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)

# The names the pages use (statuses.py derives them from the contracts).
CAMPAIGN_STATES = statuses.CAMPAIGN_STATES


# ---------------------------------------------------------------------------------------------- lists


@bp.get("/lists")
@requires("read")
def lists() -> str:
    """The organisation's lists with their counts."""
    found = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    return render_template("lists.html", lists=found)


@bp.post("/lists")
@requires("send")
def create_list() -> Response:
    """Create a list."""
    try:
        created = call(
            backends().lists.CreateList,
            lists_pb2.CreateListRequest(
                name=request.form.get("name", "").strip(), description=request.form.get("description", "").strip()
            ),
        )
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
        return redirect(url_for("mail.lists"))
    return redirect(url_for("mail.list_detail", list_id=created.id))


@bp.get("/lists/<id:list_id>")
@requires("read")
def list_detail(list_id: int) -> str:
    """One list: its subscribers and their status, a page at a time, and the CSV upload."""
    found = call(backends().lists.GetList, lists_pb2.GetListRequest(list_id=list_id))
    try:
        page = call(
            backends().lists.ListSubscribers,
            lists_pb2.ListSubscribersRequest(list_id=list_id, page_size=50, page_token=request.args.get("page", "")),
        )
    except BackendError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        abort(400)
    return render_template(
        "list.html", mailing_list=found, subscribers=page.subscribers, next_page=page.next_page_token,
        statuses=statuses.SUBSCRIBER_STATUSES,
    )  # fmt: skip


@bp.post("/lists/<id:list_id>/upload")
@requires("send")
def upload(list_id: int) -> Response:
    """Hand a CSV file to the lists service as a background import job, in chunks."""
    file = request.files.get("file")
    data = file.read() if file else b""
    if not data:
        flash(_("Choose a CSV file to upload."), "error")
        return redirect(url_for("mail.list_detail", list_id=list_id))
    lists_stub = backends().lists_imports
    try:
        job = call(
            lists_stub.CreateImport,
            lists_imports_pb2.CreateImportRequest(
                list_id=list_id,
                mode=lists_imports_pb2.IMPORT_MODE_ADD_AND_UPDATE,
                total_bytes=len(data),
                file_name=(file.filename or "upload.csv")[:300],
            ),
        )
        for offset in range(0, len(data), UPLOAD_CHUNK):
            call(
                lists_stub.UploadImportChunk,
                lists_imports_pb2.UploadImportChunkRequest(
                    import_id=job.id, offset=offset, data=data[offset : offset + UPLOAD_CHUNK]
                ),
            )
        call(lists_stub.StartImport, lists_imports_pb2.StartImportRequest(import_id=job.id))
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
        return redirect(url_for("mail.list_detail", list_id=list_id))
    return redirect(url_for("mail.import_detail", list_id=list_id, import_id=job.id))


def _import_json(job: lists_imports_pb2.ImportJob) -> dict[str, Any]:
    return {
        "state": job.state,
        "rows_done": job.rows_done,
        "rows_added": job.rows_added,
        "rows_updated": job.rows_updated,
        "rows_skipped": job.rows_skipped,
        "rows_failed": job.rows_failed,
        "state_label": label(labels.IMPORT_STATES, job.state),
        "error": job.error,
        "bytes_done": job.bytes_done,
        "total_bytes": job.total_bytes,
        "percent": min(100, round(100 * job.bytes_done / job.total_bytes)) if job.total_bytes else 0,
        "finished": job.state in ("done", "failed", "rolled_back"),
    }


@bp.get("/lists/<id:list_id>/imports/<id:import_id>")
@requires("read")
def import_detail(list_id: int, import_id: int) -> str:
    """An import's progress, updated live by the page's script."""
    job = call(backends().lists_imports.GetImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    if job.list_id != list_id:
        abort(404)
    return render_template("import.html", job=job, list_id=list_id, progress=_import_json(job))


@bp.get("/lists/<id:list_id>/imports/<id:import_id>.json")
@requires("read")
def import_progress(list_id: int, import_id: int) -> Response:
    """An import's counters, for polling."""
    job = call(backends().lists_imports.GetImport, lists_imports_pb2.GetImportRequest(import_id=import_id))
    if job.list_id != list_id:
        abort(404)
    return jsonify(_import_json(job))


# ------------------------------------------------------------------------------------------ campaigns


def _progress(campaign: campaigns_pb2.Campaign) -> dict[str, Any]:
    c = campaign.counters
    state = CAMPAIGN_STATES.get(campaign.state, "unknown")
    return {
        "state": state,
        "total": c.total,
        "queued": c.queued,
        "sent": c.sent,
        "deferred": c.deferred,
        "bounced": c.bounced,
        "failed": c.failed,
        "opens_unique": campaign.tracked.opens_unique,
        "opens_total": campaign.tracked.opens_total,
        "clicks_unique": campaign.tracked.clicks_unique,
        "clicks_total": campaign.tracked.clicks_total,
        "percent": min(100, round(100 * (c.sent + c.bounced + c.failed) / c.total)) if c.total else 0,
        "state_label": label(labels.CAMPAIGN_STATES, state),
        "finished": state in ("sent", "cancelled") and c.queued == 0 and c.deferred == 0,
    }


@bp.get("/campaigns")
@requires("read")
def campaigns() -> str:
    """The organisation's campaigns, newest first."""
    found = call(backends().campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest()).campaigns
    settings = call(backends().campaigns.GetTrackingSettings, campaigns_pb2.GetTrackingSettingsRequest())
    return render_template(
        "campaigns.html", campaigns=found, states=CAMPAIGN_STATES, schedule_of=_schedule_view,
        tracking_enabled=settings.tracking_enabled,
    )  # fmt: skip


@bp.post("/campaigns/tracking")
@requires("admin")
def tracking_settings() -> Response:
    """Switch open and click measuring on or off for the whole organisation."""
    enabled = request.form.get("tracking_enabled") == "on"
    call(backends().campaigns.UpdateTrackingSettings, campaigns_pb2.TrackingSettings(tracking_enabled=enabled))
    if enabled:
        flash(_("Opens and clicks are measured for campaigns that ask for it."), "info")
    else:
        flash(_("Opens and clicks are not measured: no mail carries a tracked link or pixel."), "info")
    return redirect(url_for("mail.campaigns"))


def _draft_fields() -> dict[str, Any]:
    """The compose form's fields, as the keyword arguments of CreateCampaignRequest and UpdateCampaignRequest."""
    form = request.form
    return {
        "name": form.get("name", ""),
        "list_ids": form_ids(form.getlist("list_ids")),
        "segment_ids": form_ids(form.getlist("segment_ids")),
        "from_name": form.get("from_name", ""),
        "from_address": form.get("from_address", ""),
        "reply_to": form.get("reply_to", ""),
        "subject": form.get("subject", ""),
        "html_body": form.get("html_body", ""),
        "text_body": form.get("text_body", ""),
        "tracking": form.get("tracking") == "on",
    }


def _compose_page(form: Any, selected: set[int], chosen_segments: set[int], error: str | None, campaign=None):
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    segments = call(backends().lists_segments.ListSegments, lists_segments_pb2.ListSegmentsRequest()).segments
    return render_template(
        "campaign_new.html",
        lists=available,
        form=form,
        selected=selected,
        error=error,
        segments=segments,
        chosen_segments=chosen_segments,
        campaign=campaign,
    ), 400 if error else 200


@bp.route("/campaigns/new", methods=["GET", "POST"])
@requires("send")
def new_campaign() -> Response | str:
    """Compose a campaign: lists, sender, subject, HTML and text with personal fields."""
    if request.method == "GET":
        return _compose_page({"tracking": True}, set(), set(), None)
    fields = _draft_fields()
    try:
        created = call(backends().campaigns.CreateCampaign, campaigns_pb2.CreateCampaignRequest(**fields))
    except BackendError as exc:
        if exc.code not in (*_FORM_ERRORS, grpc.StatusCode.NOT_FOUND):
            raise
        return _compose_page(request.form, set(fields["list_ids"]), set(fields["segment_ids"]), exc.message)
    return redirect(url_for("mail.campaign_detail", campaign_id=created.id))


@bp.get("/campaigns/<id:campaign_id>/edit")
@requires("send")
def edit_campaign(campaign_id: int) -> Response | str:
    """The compose form, filled with a draft's fields; a campaign past draft goes back to its page."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    if campaign.state != campaigns_pb2.CAMPAIGN_STATE_DRAFT:
        flash(_("Only a draft can be edited."), "error")
        return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))
    form = {
        key: getattr(campaign, key)
        for key in ("name", "from_name", "from_address", "reply_to", "subject", "html_body", "text_body", "tracking")
    }
    return _compose_page(form, set(campaign.list_ids), set(campaign.segment_ids), None, campaign)


@bp.post("/campaigns/<id:campaign_id>/edit")
@requires("send")
def update_campaign(campaign_id: int) -> Response | str:
    """Save a draft's changed fields (the campaigns service refuses anything but a draft)."""
    fields = _draft_fields()
    try:
        call(
            backends().campaigns.UpdateCampaign, campaigns_pb2.UpdateCampaignRequest(campaign_id=campaign_id, **fields)
        )
    except BackendError as exc:
        # A missing campaign is a 404 page (another organisation's); a missing list or segment is a form error.
        missing_campaign = exc.code == grpc.StatusCode.NOT_FOUND and exc.template == "campaign %(campaign)s not found"
        if missing_campaign or exc.code not in (*_FORM_ERRORS, grpc.StatusCode.NOT_FOUND):
            raise
        campaign = campaigns_pb2.Campaign(id=campaign_id)
        return _compose_page(request.form, set(fields["list_ids"]), set(fields["segment_ids"]), exc.message, campaign)
    flash(_("The draft was saved."), "info")
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))


SAMPLE_CHOICES = 20


def _recipient_fields(subscriber: lists_pb2.Subscriber) -> dict[str, Any]:
    """The fields a template sees for this subscriber, as the senders build them: attributes, then name and email."""
    fields: dict[str, Any] = {}
    if subscriber.attributes_json:
        try:
            parsed = json.loads(subscriber.attributes_json)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            fields.update(parsed)
    fields["name"] = subscriber.name
    fields["email"] = subscriber.email
    return fields


def _sample_subscribers(campaign: campaigns_pb2.Campaign) -> list[lists_pb2.Subscriber]:
    """The first subscribers of the campaign's first list, to preview and test as."""
    if not campaign.list_ids:
        return []
    page = call(
        backends().lists.ListSubscribers,
        lists_pb2.ListSubscribersRequest(list_id=campaign.list_ids[0], page_size=SAMPLE_CHOICES),
    )
    return list(page.subscribers)


def _chosen_subscriber(campaign: campaigns_pb2.Campaign, raw_id: str | None) -> lists_pb2.Subscriber | None:
    """The subscriber a person chose to preview as (one of their organisation's), else the list's first."""
    if raw_id:
        try:
            subscriber_id = int(raw_id)
        except ValueError:
            abort(400)
        # Lists answers NOT_FOUND for another organisation's subscriber: the page is a 404 then.
        return call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    first = _sample_subscribers(campaign)[:1]
    return first[0] if first else None


@bp.get("/campaigns/<id:campaign_id>")
@requires("read")
def campaign_detail(campaign_id: int) -> str:
    """A campaign: its content, a sandboxed preview as a subscriber, test send, send, and live counters."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    choices = _sample_subscribers(campaign)
    chosen = _chosen_subscriber(campaign, request.args.get("subscriber")) if request.args.get("subscriber") else None
    chosen = chosen or (choices[0] if choices else None)
    if chosen is not None and all(s.id != chosen.id for s in choices):
        choices.insert(0, chosen)
    state = CAMPAIGN_STATES.get(campaign.state, "unknown")
    return render_template(
        "campaign.html", campaign=campaign, progress=_progress(campaign), state=state, choices=choices, chosen=chosen,
        schedule=_schedule_view(campaign), time_zones=offered_zones(), default_zone=viewer_zone(),
        report=_report_view(campaign),
    )  # fmt: skip


def _report_view(campaign: campaigns_pb2.Campaign) -> dict[str, Any] | None:
    """The report part of a campaign's page (rates, charts per hour and per provider); None before any send."""
    c, t = campaign.counters, campaign.tracked
    if not c.total:
        return None
    found = call(backends().campaigns.GetCampaignReport, campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id))
    hours = [report.Hour(h.hour.ToDatetime(dt.UTC), h.delivered, h.opened, h.clicked) for h in found.hours]
    domains = [report.Domain(d.domain, d.recipients, d.delivered, d.bounced, d.opened) for d in found.domains]
    providers = report.provider_rows(domains)
    return {
        "rates": [
            (_("Delivered"), c.sent, report.rate(c.sent, c.total)),
            (_("Bounced"), c.bounced, report.rate(c.bounced, c.total)),
            (_("Opened (people)"), t.opens_unique, report.rate(t.opens_unique, c.sent)),
            (_("Clicked (people)"), t.clicks_unique, report.rate(t.clicks_unique, c.sent)),
        ],
        "hourly": report.hourly_chart(hours, viewer_zone()),
        "providers": providers,
        "provider_chart": report.provider_chart(providers),
    }


def _schedule_view(campaign: campaigns_pb2.Campaign) -> dict[str, str] | None:
    """When a scheduled campaign starts: in the zone it was chosen in, and in the viewer's when that differs."""
    if not campaign.HasField("scheduled_at"):
        return None
    at = campaign.scheduled_at.ToDatetime(dt.UTC)
    chosen = campaign.schedule_time_zone if zone_or_none(campaign.schedule_time_zone) else console_zone()
    view = {"local": local(at, chosen), "zone": chosen, "input": local(at, chosen).replace(" ", "T")}
    if chosen != viewer_zone():
        view["viewer"], view["viewer_zone"] = local(at, viewer_zone()), viewer_zone()
    return view


@bp.get("/campaigns/<id:campaign_id>/preview")
@requires("read")
def campaign_preview(campaign_id: int) -> Response:
    """The campaign's HTML personalised for a subscriber, for a sandboxed frame: its script can never run."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    subscriber = _chosen_subscriber(campaign, request.args.get("subscriber"))
    fields = _recipient_fields(subscriber) if subscriber else {}
    # Rendered like the senders do: bounded sandbox, HTML autoescaped, missing fields empty.
    try:
        if campaign.html_body:
            html = templating.render(templating.HTML.from_string(campaign.html_body), fields, RenderBudget())
        else:
            text = templating.render(templating.HTML.from_string(campaign.text_body), fields, RenderBudget())
            html = f"<pre>{text}</pre>"
    except TemplateLimitExceeded as exc:
        reason = explain(exc.templates, exc.params, str(exc))
        html = f'<p class="error">{escape(_("Refused: %(reason)s", reason=reason))}</p>'
    except Exception as exc:  # a user's template may fail in many ways; the message says how
        html = f"<p>{escape(str(exc))}</p>"
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.post("/campaigns/<id:campaign_id>/test")
@requires("send")
def campaign_test(campaign_id: int) -> Response:
    """Send the campaign to one address now, personalised as the subscriber chosen (else the list's first)."""
    to_address = request.form.get("to_address", "").strip()
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    subscriber = _chosen_subscriber(campaign, request.form.get("subscriber"))
    fields = _recipient_fields(subscriber) if subscriber else {"email": to_address}
    try:
        call(
            backends().campaigns.SendTest,
            campaigns_pb2.SendTestRequest(
                campaign_id=campaign_id, to_address=to_address,
                variables_json=json.dumps(fields, ensure_ascii=False),
            ),
        )  # fmt: skip
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        flash(_("A test message is on its way to %(address)s.", address=to_address), "info")
    chosen = {"subscriber": subscriber.id} if subscriber else {}
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id, **chosen))


@bp.post("/campaigns/<id:campaign_id>/send")
@requires("send")
def campaign_send(campaign_id: int) -> Response:
    """Start sending; the campaigns service writes the send, with the user's address, to the audit log."""
    try:
        call(backends().campaigns.SendCampaign, campaigns_pb2.SendCampaignRequest(campaign_id=campaign_id))
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
        return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))
    flash(_("Sending has started."), "info")
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))


@bp.post("/campaigns/<id:campaign_id>/schedule")
@requires("send")
def campaign_schedule(campaign_id: int) -> Response:
    """Schedule a draft (or move a schedule) to a date and time in the time zone chosen on the form."""
    zone_name = request.form.get("time_zone", "").strip() or viewer_zone()
    raw = request.form.get("send_at", "").strip()
    zone = zone_or_none(zone_name)
    if zone is None:
        flash(_("Unknown time zone %(zone)s: choose one from the menu.", zone=zone_name), "error")
        return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))
    try:
        local = dt.datetime.strptime(raw, "%Y-%m-%dT%H:%M")
    except ValueError:
        flash(_("%(value)s is not a date and time: use the picker (YYYY-MM-DD HH:MM).", value=raw or "—"), "error")
        return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))
    send_at = campaigns_pb2.ScheduleCampaignRequest(campaign_id=campaign_id, time_zone=zone_name)
    send_at.send_at.FromDatetime(local.replace(tzinfo=zone).astimezone(dt.UTC))
    try:
        call(backends().campaigns.ScheduleCampaign, send_at)
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        flash(
            _("The campaign will be sent at %(at)s (%(zone)s).", at=local.strftime("%Y-%m-%d %H:%M"), zone=zone_name),
            "info",
        )
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))


# Each console action on a running campaign: the RPC, and what the flash says when it worked.
_STATE_ACTIONS = {
    "pause": ("PauseCampaign", lambda: _("The campaign is paused.")),
    "resume": ("ResumeCampaign", lambda: _("Sending has resumed.")),
    "cancel": ("CancelCampaign", lambda: _("The campaign is cancelled.")),
    "unschedule": ("UnscheduleCampaign", lambda: _("The schedule is withdrawn: the campaign is a draft again.")),
}


@bp.post("/campaigns/<id:campaign_id>/pause", defaults={"action": "pause"})
@bp.post("/campaigns/<id:campaign_id>/resume", defaults={"action": "resume"})
@bp.post("/campaigns/<id:campaign_id>/cancel", defaults={"action": "cancel"})
@bp.post("/campaigns/<id:campaign_id>/unschedule", defaults={"action": "unschedule"})
@requires("send")
def campaign_state(campaign_id: int, action: str) -> Response:
    """Pause, resume, cancel or unschedule a campaign; a state that does not allow it is refused with a message."""
    method, done = _STATE_ACTIONS[action]
    try:
        call(getattr(backends().campaigns, method), campaigns_pb2.CampaignRequest(campaign_id=campaign_id))
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        flash(done(), "info")
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))


@bp.get("/campaigns/<id:campaign_id>/progress.json")
@requires("read")
def campaign_progress(campaign_id: int) -> Response:
    """The campaign's state and counters, for the page's polling script."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    return jsonify(_progress(campaign))
