"""Lists and campaigns pages: create, upload CSV, subscribers; compose, preview, test, send, live progress."""

from __future__ import annotations

import json
from typing import Any

import grpc
from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from mailblast.v1 import campaigns_pb2, lists_imports_pb2, lists_pb2, lists_segments_pb2
from markupsafe import escape

from services.common import templating
from services.common.templating import RenderBudget, TemplateLimitExceeded
from services.gateway import statuses
from services.gateway.clients import BackendError, backends, call
from services.gateway.explanations import explain
from services.gateway.numbers import form_ids
from services.gateway.security import PREVIEW_CSP, requires

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
        "finished": state in ("sent", "cancelled") and c.queued == 0 and c.deferred == 0,
    }


@bp.get("/campaigns")
@requires("read")
def campaigns() -> str:
    """The organisation's campaigns, newest first."""
    found = call(backends().campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest()).campaigns
    return render_template("campaigns.html", campaigns=found, states=CAMPAIGN_STATES)


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
        return _compose_page({}, set(), set(), None)
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
        for key in ("name", "from_name", "from_address", "reply_to", "subject", "html_body", "text_body")
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


@bp.get("/campaigns/<id:campaign_id>")
@requires("read")
def campaign_detail(campaign_id: int) -> str:
    """A campaign: its content, a sandboxed preview, test send, send, and live counters."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    return render_template(
        "campaign.html", campaign=campaign, progress=_progress(campaign), state=CAMPAIGN_STATES.get(campaign.state)
    )


def _sample_fields() -> dict[str, Any]:
    return {"name": current_user.user.login, "email": current_user.user.email}


@bp.get("/campaigns/<id:campaign_id>/preview")
@requires("read")
def campaign_preview(campaign_id: int) -> Response:
    """The campaign's HTML with sample personal fields, for a sandboxed frame: its script can never run."""
    campaign = call(backends().campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
    # Rendered like the senders do: bounded sandbox, HTML autoescaped, missing fields empty.
    try:
        if campaign.html_body:
            html = templating.render(templating.HTML.from_string(campaign.html_body), _sample_fields(), RenderBudget())
        else:
            text = templating.render(templating.HTML.from_string(campaign.text_body), _sample_fields(), RenderBudget())
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
    """Send the campaign to one address now."""
    to_address = request.form.get("to_address", "").strip()
    try:
        call(
            backends().campaigns.SendTest,
            campaigns_pb2.SendTestRequest(
                campaign_id=campaign_id, to_address=to_address,
                variables_json=json.dumps({**_sample_fields(), "email": to_address}, ensure_ascii=False),
            ),
        )  # fmt: skip
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        flash(_("A test message is on its way to %(address)s.", address=to_address), "info")
    return redirect(url_for("mail.campaign_detail", campaign_id=campaign_id))


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


# Each console action on a running campaign: the RPC, and what the flash says when it worked.
_STATE_ACTIONS = {
    "pause": ("PauseCampaign", lambda: _("The campaign is paused.")),
    "resume": ("ResumeCampaign", lambda: _("Sending has resumed.")),
    "cancel": ("CancelCampaign", lambda: _("The campaign is cancelled.")),
}


@bp.post("/campaigns/<id:campaign_id>/pause", defaults={"action": "pause"})
@bp.post("/campaigns/<id:campaign_id>/resume", defaults={"action": "resume"})
@bp.post("/campaigns/<id:campaign_id>/cancel", defaults={"action": "cancel"})
@requires("send")
def campaign_state(campaign_id: int, action: str) -> Response:
    """Pause, resume or cancel a campaign; a state that does not allow it is refused with a message."""
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
