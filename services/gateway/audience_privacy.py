"""The console's personal data pages: a subscriber's data as JSON, and erasure (ListsPrivacyService)."""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, request, url_for
from flask_babel import gettext as _
from mailblast.v1 import (
    lists_pb2,
    lists_privacy_pb2,
)

from services.gateway.clients import backends, call
from services.gateway.security import requires

bp = Blueprint("privacy", __name__)


@bp.get("/subscribers/<id:subscriber_id>/personal-data.json")
@requires("admin")
def subscriber_data(subscriber_id: int) -> Response:
    """Everything held about the subscriber, as a JSON download (a personal data request)."""
    data = call(
        backends().lists_privacy.ExportSubscriberData,
        lists_privacy_pb2.ExportSubscriberDataRequest(subscriber_id=subscriber_id),
    )
    response = Response(data.json, mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="subscriber-{subscriber_id}.json"'
    return response


@bp.post("/subscribers/<id:subscriber_id>/erase")
@requires("admin")
def erase_subscriber(subscriber_id: int) -> Response:
    """Erase the subscriber completely (a keyed hash stays suppressed); the typed address confirms it."""
    subscriber = call(backends().lists.GetSubscriber, lists_pb2.GetSubscriberRequest(subscriber_id=subscriber_id))
    if request.form.get("confirm_email", "").strip().lower() != subscriber.email.lower():
        flash(_("Type the subscriber's address to confirm the erasure."), "error")
        return redirect(url_for("subscribers.subscriber_detail", subscriber_id=subscriber_id))
    call(
        backends().lists_privacy.EraseSubscriber, lists_privacy_pb2.EraseSubscriberRequest(subscriber_id=subscriber_id)
    )
    flash(_("The subscriber was erased."), "info")
    return redirect(url_for("subscribers.subscribers"))
