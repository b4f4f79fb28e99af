"""The sending-domains pages: add a domain, the DNS records to publish (each copyable), the live check."""

from __future__ import annotations

import grpc
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from mailblast.v1 import domains_pb2

from services.gateway.clients import BackendError, backends, call
from services.gateway.explanations import explain_json
from services.gateway.security import requires

bp = Blueprint("domains", __name__)

_FORM_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)
STATUS = {
    domains_pb2.RECORD_STATUS_UNSPECIFIED: ("unchecked", _l("Not checked")),
    domains_pb2.RECORD_STATUS_PASS: ("pass", _l("OK")),
    domains_pb2.RECORD_STATUS_MISSING: ("missing", _l("Missing")),
    domains_pb2.RECORD_STATUS_WRONG: ("wrong", _l("Wrong")),
    domains_pb2.RECORD_STATUS_ERROR: ("error", _l("No answer")),
}
PURPOSES = {
    "dkim-rsa": _l("DKIM signature key (RSA)"),
    "dkim-ed25519": _l("DKIM signature key (Ed25519)"),
    "spf": _l("SPF (servers allowed to send)"),
    "dmarc": _l("DMARC policy"),
    "return-path": _l("Return path for bounces"),
    "mta-sts": _l("MTA-STS (optional)"),
    "tls-rpt": _l("TLS reports (optional)"),
}


def _records(domain: domains_pb2.SendingDomain) -> list[dict]:
    """The domain's records as the page shows them, explanations in the user's language."""
    return [
        {
            "record": record,
            "purpose": PURPOSES.get(record.purpose, record.purpose),
            "status": STATUS[record.status][0],
            "status_label": STATUS[record.status][1],
            "problem": explain_json(record.problem_json, record.problem),
            "advice": explain_json(record.advice_json, record.advice),
        }
        for record in domain.records
    ]


@bp.get("/domains")
@requires("read")
def index() -> str:
    """The organisation's sending domains and the form to add one."""
    found = call(backends().domains.ListSendingDomains, domains_pb2.ListSendingDomainsRequest()).domains
    return render_template("domains.html", domains=found)


@bp.post("/domains")
@requires("admin")
def add() -> Response:
    """Add a domain: its keys are made, its records shown."""
    try:
        added = call(
            backends().domains.AddSendingDomain,
            domains_pb2.AddSendingDomainRequest(domain=request.form.get("domain", "")),
        )
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
        return redirect(url_for("domains.index"))
    return redirect(url_for("domains.detail", domain_id=added.id))


@bp.get("/domains/<id:domain_id>")
@requires("read")
def detail(domain_id: int) -> str:
    """One domain: every record to publish with its last check."""
    domain = call(backends().domains.GetSendingDomain, domains_pb2.SendingDomainRequest(domain_id=domain_id))
    return render_template("domain.html", domain=domain, records=_records(domain))


@bp.post("/domains/<id:domain_id>/check")
@requires("admin")
def check(domain_id: int) -> Response:
    """Look the records up in DNS now."""
    try:
        checked = call(backends().domains.CheckSendingDomain, domains_pb2.SendingDomainRequest(domain_id=domain_id))
    except BackendError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        flash(_("Refused: %(reason)s", reason=exc.message), "error")
    else:
        if checked.verified:
            flash(_("Verified: campaigns From %(domain)s are signed by it.", domain=checked.domain))
        else:
            flash(_("Not verified yet: publish the records marked below, then check again."), "error")
    return redirect(url_for("domains.detail", domain_id=domain_id))


@bp.post("/domains/<id:domain_id>/delete")
@requires("admin")
def delete(domain_id: int) -> Response:
    """Delete a domain and its keys."""
    call(backends().domains.DeleteSendingDomain, domains_pb2.SendingDomainRequest(domain_id=domain_id))
    flash(_("Sending domain deleted."))
    return redirect(url_for("domains.index"))
