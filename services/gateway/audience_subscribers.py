"""The console's subscriber pages: search, detail with its status history, edit (lists' ListsService)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_pb2,
)

from services.gateway.audience import (
    STATUS_VALUES,
    defined_fields,
    refused,
)
from services.gateway.clients import BackendError, backends, call
from services.gateway.numbers import form_id
from services.gateway.security import requires
from services.gateway.statuses import SUBSCRIBER_STATUSES

bp = Blueprint("subscribers", __name__)


@bp.get("/subscribers")
@requires("read")
def subscribers() -> str:
    """Search by address, name, status, list and field value, a keyset page at a time."""
    args = request.args
    field_key, field_value = args.get("field_key", ""), args.get("field_value", "")
    query = lists_pb2.SearchSubscribersRequest(
        email_contains=args.get("email", "").strip(),
        name_contains=args.get("name", "").strip(),
        status=STATUS_VALUES.get(args.get("status", ""), 0),
        list_id=form_id(args.get("list_id")),
        field_key=field_key if field_value else "",
        field_value=field_value if field_key else "",
        page_size=50,
        page_token=args.get("page", ""),
    )
    try:
        found = call(backends().lists.SearchSubscribers, query)
    except BackendError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        abort(400)
    available = call(backends().lists.ListLists, lists_pb2.ListListsRequest()).lists
    filters = {k: v for k, v in args.items() if k != "page"}
    next_url = (
        url_for("subscribers.subscribers", **filters, page=found.next_page_token) if found.next_page_token else ""
    )
    return render_template(
        "subscribers.html", found=found, lists=available, fields=defined_fields(), statuses=SUBSCRIBER_STATUSES,
        filters=filters, next_url=next_url,
    )  # fmt: skip


def _attributes(subscriber: lists_pb2.Subscriber) -> dict[str, Any]:
    try:
        value = json.loads(subscriber.attributes_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@bp.get("/subscribers/<id:subscriber_id>")
@requires("read")
def subscriber_detail(subscriber_id: int) -> str:
    """One subscriber: fields, status with its history, edit, personal data export and erasure."""
    subscriber = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    events = call(
        backends().lists.ListSubscriberEvents, lists_pb2.ListSubscriberEventsRequest(subscriber_id=subscriber_id)
    ).events
    return render_template(
        "subscriber.html", subscriber=subscriber, events=events, fields=defined_fields(),
        attributes=_attributes(subscriber), statuses=SUBSCRIBER_STATUSES,
    )  # fmt: skip


@bp.post("/subscribers/<id:subscriber_id>")
@requires("send")
def update_subscriber(subscriber_id: int) -> Response:
    """Change the name, field values or status (every status change is recorded with the reason)."""
    defined = defined_fields()
    attributes: dict[str, Any] = {}
    for field in defined:
        name = f"field.{field.key}"
        if name in request.form:
            value = request.form[name].strip()
            attributes[field.key] = value if value else None
    current = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    status = STATUS_VALUES.get(request.form.get("status", ""), 0)
    if status == current.status:
        status = 0  # unchanged: no status event
    try:
        call(
            backends().lists.UpdateSubscriber,
            lists_pb2.UpdateSubscriberRequest(
                subscriber_id=subscriber_id,
                name=request.form.get("name", "").strip(),
                attributes_json=json.dumps(attributes, ensure_ascii=False),
                status=status,
                reason=request.form.get("reason", "").strip()[:500] or "console",
            ),
        )
    except BackendError as exc:
        refused(exc)
    else:
        flash(_("Saved."), "info")
    return redirect(url_for("subscribers.subscriber_detail", subscriber_id=subscriber_id))
