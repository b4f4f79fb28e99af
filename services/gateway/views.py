"""The gateway's health answer for probes and supervisors, and the console's home."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, url_for

bp = Blueprint("gateway", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/")
def home() -> Response:
    """The console opens on the campaigns."""
    return redirect(url_for("mail.campaigns"))
