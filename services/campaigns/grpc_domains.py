"""DomainsService: sending domains in and out as protobuf; keys, records and checks are in domains.py."""

from __future__ import annotations

import asyncio
import datetime as dt

from mailblast.v1 import auth_pb2_grpc, domains_pb2, domains_pb2_grpc

from services.campaigns import domains
from services.campaigns.domains import Check, Lookup, Platform, Status, Verification
from services.campaigns.store_domains import DomainRow, DomainStore
from services.common.audit import AuditTrail
from services.common.clock import Clock, SystemClock
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Problem, explanation_json
from services.common.identity import require_scope
from services.common.log import get_logger
from services.common.sealing import SecretBox

log = get_logger(__name__)

_STATUS = {
    Status.PASS: domains_pb2.RECORD_STATUS_PASS,
    Status.MISSING: domains_pb2.RECORD_STATUS_MISSING,
    Status.WRONG: domains_pb2.RECORD_STATUS_WRONG,
    Status.ERROR: domains_pb2.RECORD_STATUS_ERROR,
}


def check_json(check: Check) -> dict:
    """One check as the domain's last_check keeps it (the record, the verdict, the explanations)."""
    record = check.record
    return {
        "purpose": str(record.purpose), "type": record.rtype, "name": record.name, "value": record.value,
        "required": record.required, "status": str(check.status), "found": list(check.found),
        "problem": str(check.problem) if check.problem else "",
        "problem_json": explanation_json(check.problem) if check.problem else "",
        "fix": check.fix,
        "advice": str(check.advice) if check.advice else "",
        "advice_json": explanation_json(check.advice) if check.advice else "",
    }  # fmt: skip


def verification_json(verification: Verification) -> dict:
    """A whole check as stored."""
    return {"records": [check_json(c) for c in verification.checks], "verified": verification.verified}


def to_proto(row: DomainRow) -> domains_pb2.SendingDomain:
    """The wire form of a stored domain, its records as the last check saw them."""
    message = domains_pb2.SendingDomain(
        id=row.id, domain=row.domain, verified=row.verified_at is not None, return_path_domain=row.return_path_host
    )
    for record in (row.last_check or {}).get("records", []):
        message.records.append(
            domains_pb2.DnsRecord(
                purpose=record["purpose"], type=record["type"], name=record["name"], value=record["value"],
                required=record["required"], status=_STATUS[Status(record["status"])], found=record["found"],
                problem=record["problem"], problem_json=record["problem_json"], fix=record["fix"],
                advice=record["advice"], advice_json=record["advice_json"],
            )
        )  # fmt: skip
    message.created_at.FromDatetime(row.created_at)
    if row.checked_at:
        message.checked_at.FromDatetime(row.checked_at)
    return message


class DomainsServicer(domains_pb2_grpc.DomainsServiceServicer):
    """Sending domains of the caller's organisation; another organisation's domain is NOT_FOUND."""

    def __init__(
        self,
        store: DomainStore,
        lookup: Lookup,
        platform: Platform,
        box: SecretBox | None,
        auth: auth_pb2_grpc.AuthServiceStub | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._lookup = lookup
        self._platform = platform
        self._box = box
        self._audit_trail = AuditTrail(auth)
        self._clock = clock or SystemClock()

    async def _get(self, organization_id: int, domain_id: int) -> DomainRow:
        row = await self._store.get(organization_id, domain_id)
        if row is None:
            raise NotFound("sending domain %(domain)s not found", domain=domain_id)
        return row

    async def _check(self, row: DomainRow) -> DomainRow:
        verification = await domains.verify(row.domain, row.keys, self._platform, self._lookup)
        now = self._clock.now().astimezone(dt.UTC)
        await self._store.save_check(
            row.organization_id, row.id, verification_json(verification), verification.conclusive,
            verification.verified, now,
        )  # fmt: skip
        log.info(
            "sending domain checked", domain_id=row.id, verified=verification.verified,
            conclusive=verification.conclusive,
        )  # fmt: skip
        return await self._get(row.organization_id, row.id)

    async def AddSendingDomain(self, request, context):
        principal = require_scope("admin")
        try:
            domain = domains.normalize_domain(request.domain)
        except Problem as exc:
            raise InvalidArgument.of(exc, "domain: ") from None
        if self._box is None:
            raise FailedPrecondition(
                "this installation cannot keep DKIM keys: MAILBLAST_DKIM_SEALING_KEYS is not set on campaigns"
            )
        box = self._box
        # RSA key generation takes a fraction of a second of CPU: off the event loop.
        keys = await asyncio.to_thread(domains.generate_keys, 1)
        sealed = [(key, box.seal(key.private_pem)) for key in keys]
        row = await self._store.add(principal.organization_id, domain, domains.return_path_host(domain), sealed)
        await self._audit_trail.record("sending_domain.added", f"sending_domain:{row.id}", {"domain": domain},
                                       context=context)  # fmt: skip
        return to_proto(await self._check(row))

    async def ListSendingDomains(self, request, context):
        principal = require_scope("read")
        rows = await self._store.list(principal.organization_id)
        return domains_pb2.ListSendingDomainsResponse(domains=[to_proto(r) for r in rows])

    async def GetSendingDomain(self, request, context):
        principal = require_scope("read")
        return to_proto(await self._get(principal.organization_id, request.domain_id))

    async def CheckSendingDomain(self, request, context):
        principal = require_scope("admin")
        return to_proto(await self._check(await self._get(principal.organization_id, request.domain_id)))

    async def DeleteSendingDomain(self, request, context):
        principal = require_scope("admin")
        row = await self._get(principal.organization_id, request.domain_id)
        if not await self._store.delete(principal.organization_id, request.domain_id):
            raise NotFound("sending domain %(domain)s not found", domain=request.domain_id)
        await self._audit_trail.record("sending_domain.deleted", f"sending_domain:{row.id}", {"domain": row.domain},
                                       context=context)  # fmt: skip
        return domains_pb2.DeleteSendingDomainResponse()
