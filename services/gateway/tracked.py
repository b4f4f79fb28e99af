"""The public tracking endpoints: /t/o/<token> (the open pixel) and /t/c/<token> (a tracked link's redirect).

Each token is signed by the sender (services/common/tracking.py) and checked here before anything is
done: a forged, changed or truncated token gets a 404 and is never redirected anywhere. The redirect
target is the URL signed into the token, so the endpoint cannot become an open redirect. Campaigns counts
the request; should it not answer, the person still gets the image or the page (the count is lost).
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request
from flask_babel import gettext as _
from mailblast.v1 import campaigns_pb2

from services.common import tracking
from services.common.log import get_logger
from services.gateway.clients import BackendError, backends, call

log = get_logger(__name__)
bp = Blueprint("tracked", __name__)

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _record(kind: str, token: str) -> None:
    try:
        call(
            backends().campaigns.RecordTracking,
            campaigns_pb2.RecordTrackingRequest(
                kind=kind, token=token, user_agent=request.headers.get("User-Agent", "")[:500]
            ),
            as_service=True,
        )
    except BackendError as exc:
        log.warning("tracking request not counted", kind=kind, code=exc.code.name, reason=exc.message)


def _invalid() -> tuple[str, int]:
    page = render_template("public_message.html", title=_("Link not valid"), message=_("This link is not valid."))
    return page, 404


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store, max-age=0"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/t/o/<token>")
def opened(token: str) -> Any:
    """The open pixel: counted, then a 1×1 transparent GIF that no cache keeps."""
    if tracking.read_token(current_app.config["MAILBLAST"].internal_key, tracking.OPEN, token) is None:
        return _invalid()
    _record(tracking.OPEN, token)
    return _no_store(Response(PIXEL, mimetype="image/gif"))


@bp.get("/t/c/<token>")
def clicked(token: str) -> Any:
    """A tracked link: counted, then a redirect to the URL signed into the token (and nowhere else)."""
    event = tracking.read_token(current_app.config["MAILBLAST"].internal_key, tracking.CLICK, token)
    if event is None:
        return _invalid()
    _record(tracking.CLICK, token)
    return _no_store(redirect(event.url, code=302))
