"""The gateway's gRPC clients: one channel per service, calls signed as the gateway for the logged-in user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from flask import current_app, g, has_request_context, request
from mailblast.v1 import (
    auth_pb2_grpc,
    campaigns_pb2_grpc,
    lists_fields_pb2_grpc,
    lists_imports_pb2_grpc,
    lists_pb2_grpc,
    lists_privacy_pb2_grpc,
    lists_segments_pb2_grpc,
    lists_signup_pb2_grpc,
    lists_suppression_pb2_grpc,
)

from services.common.errors import explanation_from
from services.common.identity import Principal, reset_principal, set_principal
from services.common.rpc import ServiceIdentity, blocking_service_channel
from services.gateway.config import Config
from services.gateway.explanations import explain

SERVICE_NAME = "gateway"
# The end user's address travels with every call, for the audit log (auth reads this key).
SOURCE_IP_HEADER = "x-mailblast-source-ip"
# The gateway's own identity, for the calls auth answers for a service (Login, GetSession, ...).
GATEWAY_PRINCIPAL = Principal(organization_id=0, service=SERVICE_NAME)
CALL_TIMEOUT = 15.0


class BackendError(Exception):
    """A service refused a call; `code` is the gRPC status, `message` its explanation in the user's language.

    `template` is the service's English template when it sent one: what code may compare, whatever the language.
    """

    def __init__(self, code: grpc.StatusCode, message: str, template: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.template = template

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> BackendError:
        """The refusal an RpcError reports, its explanation translated when the service sent a template."""
        message = exc.details() or exc.code().name
        explained = explanation_from(exc.trailing_metadata())
        if explained is None:
            return cls(exc.code(), message)
        templates, params = explained
        if has_request_context():
            message = explain(templates, params, message)
        return cls(exc.code(), message, "".join(templates))


class Backends:
    """Mutual-TLS channels and stubs for auth, lists and campaigns, shared by every request of the app.

    Each channel signs the principal of the call under way (see `call`) for its own service.
    """

    def __init__(self, config: Config) -> None:
        self.identity = ServiceIdentity(SERVICE_NAME, config.grpc_tls, config.internal_key)
        self._channels = [
            blocking_service_channel(addr, callee, self.identity)
            for addr, callee in (
                (config.auth_addr, "auth"),
                (config.lists_addr, "lists"),
                (config.campaigns_addr, "campaigns"),
            )
        ]
        self.auth = auth_pb2_grpc.AuthServiceStub(self._channels[0])
        # The lists process serves one gRPC service per sub-domain, all on its one channel.
        lists = self._channels[1]
        self.lists = lists_pb2_grpc.ListsServiceStub(lists)
        self.lists_fields = lists_fields_pb2_grpc.ListsFieldsServiceStub(lists)
        self.lists_imports = lists_imports_pb2_grpc.ListsImportsServiceStub(lists)
        self.lists_segments = lists_segments_pb2_grpc.ListsSegmentsServiceStub(lists)
        self.lists_suppression = lists_suppression_pb2_grpc.ListsSuppressionServiceStub(lists)
        self.lists_signup = lists_signup_pb2_grpc.ListsSignupServiceStub(lists)
        self.lists_privacy = lists_privacy_pb2_grpc.ListsPrivacyServiceStub(lists)
        self.campaigns = campaigns_pb2_grpc.CampaignsServiceStub(self._channels[2])

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            channel.close()


def backends() -> Backends:
    """The application's backends."""
    return current_app.extensions["mailblast_backends"]


def client_ip() -> str:
    """The end user's address as the server saw it."""
    return (request.remote_addr or "")[:100]


def call(method: Callable[..., Any], message: Any, *, as_service: bool = False, timeout: float = CALL_TIMEOUT) -> Any:
    """Call a unary RPC for the logged-in user (or as the gateway itself); refusals raise BackendError."""
    principal = GATEWAY_PRINCIPAL if as_service else g.get("principal")
    if principal is None:
        raise BackendError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
    # The channel signs the principal current while the call starts, for the service it leads to.
    token = set_principal(principal)
    try:
        return method(message, metadata=[(SOURCE_IP_HEADER, client_ip())], timeout=timeout)
    except grpc.RpcError as exc:
        raise BackendError.from_rpc(exc) from None
    finally:
        reset_principal(token)


def stream(method: Callable[..., Any], message: Any, timeout: float = 600.0) -> Any:
    """Call a server-streaming RPC for the logged-in user; iterate the result."""
    token = set_principal(g.get("principal"))
    try:
        return method(message, metadata=[(SOURCE_IP_HEADER, client_ip())], timeout=timeout)
    finally:
        reset_principal(token)
