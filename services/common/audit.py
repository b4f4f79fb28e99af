"""Recording a service's actions in auth's audit log, as the caller of the request (or a given principal)."""

from __future__ import annotations

import json

import grpc
from mailblast.v1 import auth_pb2, auth_pb2_grpc

from services.common.identity import Principal, peek_principal, reset_principal, set_principal
from services.common.log import get_logger
from services.common.rpc import caller_address

log = get_logger(__name__)


class AuditTrail:
    """Writes events to auth's audit log over the service's auth channel; auth marks them with this service."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub | None) -> None:
        self._auth = auth

    async def record(
        self,
        action: str,
        target: str,
        detail: dict | None = None,
        *,
        context: grpc.aio.ServicerContext | None = None,
        source_ip: str = "",
        principal: Principal | None = None,
    ) -> None:
        """Record one event for the current principal (or `principal`, for work done in the background).

        The address is the caller's (from `context`) or `source_ip`. A failure is logged loudly rather than
        undoing what was done: the action has already happened.
        """
        if self._auth is None:
            log.warning("no AUTH_ADDR: action not audited", action=action, target=target)
            return
        if context is not None:
            source_ip = caller_address(context)
        actor = principal or peek_principal()
        details = dict(detail or {})
        if actor is not None and actor.service:
            # The service the caller came through (the console), before this one relays it to auth.
            details.setdefault("via", actor.service)
        token = set_principal(principal) if principal is not None else None
        try:
            await self._auth.RecordAuditEvent(
                auth_pb2.RecordAuditEventRequest(
                    action=action, target=target, detail_json=json.dumps(details, ensure_ascii=False),
                    source_ip=source_ip,
                ),
                timeout=10,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            log.error("could not record an action in the audit log", action=action, target=target, error=exc.details())
        finally:
            if token is not None:
                reset_principal(token)
