"""gRPC plumbing shared by the services: a server with health, identity and error mapping; client channels."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

from services.common import errors
from services.common.identity import (
    AUTHORIZATION_HEADER,
    IDENTITY_HEADER,
    IdentitySigner,
    Principal,
    peek_principal,
    reset_principal,
    set_principal,
)
from services.common.log import get_logger

log = get_logger(__name__)

# The console passes its end user's address on every call in this metadata key, for the audit log.
SOURCE_IP_HEADER = "x-mailblast-source-ip"

# Resolves a bearer API token to its principal (auth answers this for everyone else).
TokenResolver = Callable[[str], Awaitable[Principal]]

_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _status_for(exc: errors.ServiceError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code_name, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, exc: errors.ServiceError) -> None:
    # The details stay plain English for API and CLI users; the template travels beside them so the
    # console can say the same in the user's language.
    await context.abort(_status_for(exc), str(exc), trailing_metadata=errors.explanation_metadata(exc))


class _IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Establishes the caller for every call and turns domain errors into status codes."""

    def __init__(self, signer: IdentitySigner, resolve_token: TokenResolver | None) -> None:
        self._signer = signer
        self._resolve_token = resolve_token

    async def _principal(self, metadata: Iterable[tuple[str, Any]]) -> Principal:
        md = {k.lower(): v for k, v in metadata or ()}
        if IDENTITY_HEADER in md:
            return self._signer.verify(str(md[IDENTITY_HEADER]))
        auth = str(md.get(AUTHORIZATION_HEADER, ""))
        if auth.lower().startswith("bearer ") and self._resolve_token is not None:
            return await self._resolve_token(auth[7:].strip())
        raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <API token>'")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_PUBLIC_PREFIXES):
            return handler
        outer = self

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                try:
                    token = set_principal(await outer._principal(context.invocation_metadata()))
                except errors.ServiceError as exc:
                    await _abort(context, exc)
                try:
                    return await inner(request, context)
                except errors.ServiceError as exc:
                    await _abort(context, exc)
                finally:
                    reset_principal(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                try:
                    token = set_principal(await outer._principal(context.invocation_metadata()))
                except errors.ServiceError as exc:
                    await _abort(context, exc)
                try:
                    result = inner_stream(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                except errors.ServiceError as exc:
                    await _abort(context, exc)
                finally:
                    reset_principal(token)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def _peer_ip(context: grpc.aio.ServicerContext) -> str:
    """The caller's address from gRPC's peer string ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else ""


def caller_address(context: grpc.aio.ServicerContext) -> str:
    """The end user's address: the one the console relays for a service caller, else the gRPC peer's."""
    principal = peek_principal()
    if principal is not None and principal.service:
        # Only a mailblast service (the console) is trusted to say which address its user came from.
        relayed = [str(v) for k, v in context.invocation_metadata() or () if k == SOURCE_IP_HEADER]
        if relayed:
            return relayed[0][:100]
    return _peer_ip(context)[:100]


class GrpcServer:
    """A started gRPC server with the health service; `port` is the bound port."""

    def __init__(self, server: grpc.aio.Server, port: int, health: health_aio.HealthServicer) -> None:
        self.server = server
        self.port = port
        self.health = health

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, then stop accepting calls and finish those under way."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    bind: str,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    signer: IdentitySigner,
    resolve_token: TokenResolver | None = None,
) -> GrpcServer:
    """Start a server on `bind` ("host:port", port 0 for any); `register` adds servicers, returns their names."""
    server = grpc.aio.server(
        interceptors=[aio_server_interceptor(), _IdentityInterceptor(signer, resolve_token)],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    names = list(register(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(bind)
    if port == 0:
        raise RuntimeError(f"could not bind gRPC server to {bind}")
    await server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, port, health)


class _OutgoingIdentity:
    """Adds the signed identity of the current principal, marked with this service's name, to each call."""

    def __init__(self, signer: IdentitySigner, service: str) -> None:
        self._signer = signer
        self._service = service

    def _details(self, details):
        principal = peek_principal()
        metadata = list(details.metadata or [])
        if principal is None or any(k == IDENTITY_HEADER for k, _ in metadata):
            return details
        metadata.append((IDENTITY_HEADER, self._signer.sign(principal.acting_as(self._service))))
        return (
            details._replace(metadata=metadata) if hasattr(details, "_replace") else _with_metadata(details, metadata)
        )


class _OutgoingIdentityUnary(_OutgoingIdentity, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


# grpc.aio files each interceptor under the first kind it is an instance of, so each kind needs its own object.
class _OutgoingIdentityStream(_OutgoingIdentity, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


def _with_metadata(details, metadata):
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def service_channel(target: str, signer: IdentitySigner, service: str) -> grpc.aio.Channel:
    """An insecure channel to another mailblast service that carries the current caller's identity."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[
            *aio_client_interceptors(),
            _OutgoingIdentityUnary(signer, service),
            _OutgoingIdentityStream(signer, service),
        ],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )


class TokenCache:
    """Remembers token lookups briefly so that every call does not cost a round trip to auth."""

    def __init__(self, resolve: TokenResolver, ttl_seconds: float = 10.0) -> None:
        self._resolve = resolve
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, Principal]] = {}

    async def __call__(self, token: str) -> Principal:
        now = time.monotonic()
        hit = self._entries.get(token)
        if hit and hit[0] > now:
            return hit[1]
        principal = await self._resolve(token)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token] = (now + self._ttl, principal)
        return principal


def auth_token_resolver(channel: grpc.aio.Channel, signer: IdentitySigner, service: str) -> TokenResolver:
    """A resolver that asks the auth service, as this service, who a bearer token belongs to."""
    from mailblast.v1 import auth_pb2, auth_pb2_grpc

    stub = auth_pb2_grpc.AuthServiceStub(channel)
    caller = Principal(organization_id=0, service=service)

    async def resolve(token: str) -> Principal:
        try:
            reply = await stub.Authenticate(
                auth_pb2.AuthenticateRequest(token=token),
                metadata=[(IDENTITY_HEADER, signer.sign(caller))],
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise errors.Unauthenticated(exc.details() or "invalid API token") from None
            raise
        return Principal(
            organization_id=reply.organization_id,
            user_id=reply.user_id,
            scopes=tuple(reply.scopes),
            role=reply.role,
            token_id=reply.token_id,
        )

    return TokenCache(resolve)
