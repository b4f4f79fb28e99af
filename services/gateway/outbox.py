"""Development only: the organisation's messages the SMTP catcher received, with headers, DKIM result and TLS flag.

Whose a message is comes from its Message-ID, which the sender signs with the internal key (services.common.verp):
a header anyone sending to the catcher could write is never trusted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim
from flask import Blueprint, Response, abort, current_app, render_template
from flask_login import current_user

from services.common.verp import message_organization
from services.gateway.security import PREVIEW_CSP, requires

bp = Blueprint("outbox", __name__)

_NAME = re.compile(r"^[0-9]+-[0-9]+$")
MAX_LISTED = 200


@dataclass(frozen=True)
class CaughtMail:
    """One message in the catcher's folder."""

    name: str
    received_at: datetime
    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    tls_version: str | None
    message: EmailMessage
    raw: bytes

    @property
    def subject(self) -> str:
        """The decoded Subject."""
        return str(self.message.get("Subject", ""))


def _folder() -> Path:
    return Path(current_app.config["MAILBLAST"].dev_outbox_dir)


def _read(stem: Path) -> CaughtMail:
    meta = json.loads(stem.with_suffix(".json").read_text())
    raw = stem.with_suffix(".eml").read_bytes()
    message = BytesParser(policy=policy.default).parsebytes(raw)
    return CaughtMail(
        name=stem.name,
        received_at=datetime.fromtimestamp(meta.get("received_at", 0), UTC),
        mail_from=meta.get("mail_from", ""),
        rcpt_tos=list(meta.get("rcpt_tos", [])),
        tls=bool(meta.get("tls")),
        tls_version=meta.get("tls_version"),
        message=message,  # type: ignore[arg-type]
        raw=raw,
    )


def dkim_results(raw: bytes, records: dict[str, str]) -> list[tuple[str, bool]]:
    """Verify each DKIM signature with the development keys: [(d=/s= of the signature, passed)]."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode(), "").encode()

    results = []
    message = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    signatures = message.get_all("DKIM-Signature") or []
    for index, header in enumerate(signatures):
        tags = dict(part.strip().split("=", 1) for part in re.sub(r"\s+", "", str(header)).split(";") if "=" in part)
        label = f"d={tags.get('d', '?')} s={tags.get('s', '?')} a={tags.get('a', '?')}"
        try:
            passed = bool(dkim.DKIM(raw).verify(idx=index, dnsfunc=dnsfunc))
        except Exception:  # a malformed signature is a failure to show, not a crash
            passed = False
        results.append((label, passed))
    return results


def _stems() -> list[Path]:
    folder = _folder()
    if not folder.is_dir():
        return []
    stems = [p.with_suffix("") for p in folder.glob("*.json") if _NAME.match(p.stem)]
    return sorted((s for s in stems if s.with_suffix(".eml").exists()), key=lambda s: s.name, reverse=True)


def _ours(mail: CaughtMail) -> bool:
    """Whether the logged-in user's organisation sent this message (its signed Message-ID says so)."""
    key = current_app.config["MAILBLAST"].internal_key
    organization = message_organization(key, str(mail.message.get("Message-ID", "")))
    return organization is not None and organization == current_user.principal.organization_id


def _our_mail(limit: int) -> list[CaughtMail]:
    """The organisation's newest `limit` messages, newest first."""
    found = []
    for stem in _stems():
        mail = _read(stem)
        if _ours(mail):
            found.append(mail)
            if len(found) == limit:
                break
    return found


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else ""


@bp.get("/outbox")
@requires("admin")
def index() -> str:
    """The newest caught messages first."""
    records = current_app.config["MAILBLAST"].dev_dkim_records
    mails = _our_mail(MAX_LISTED)
    results = {m.name: dkim_results(m.raw, records) for m in mails}
    return render_template("outbox.html", mails=mails, dkim=results)


def _one(name: str) -> CaughtMail:
    if not _NAME.match(name):
        abort(404)
    stem = _folder() / name
    if not stem.with_suffix(".json").exists() or not stem.with_suffix(".eml").exists():
        abort(404)
    mail = _read(stem)
    if not _ours(mail):
        # Another organisation's message is not found, as everything of another organisation.
        abort(404)
    return mail


@bp.get("/outbox/<name>")
@requires("admin")
def message(name: str) -> str:
    """One message: envelope, TLS, DKIM, every header, the text part, and the HTML part in a sandbox."""
    mail = _one(name)
    records = current_app.config["MAILBLAST"].dev_dkim_records
    return render_template(
        "outbox_message.html",
        mail=mail,
        dkim=dkim_results(mail.raw, records),
        headers=list(mail.message.items()),
        text=_body(mail.message, "plain"),
        has_html=bool(_body(mail.message, "html")),
    )


@bp.get("/outbox/<name>/html")
@requires("admin")
def message_html(name: str) -> Response:
    """The HTML part, for a sandboxed frame."""
    response = Response(_body(_one(name).message, "html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
