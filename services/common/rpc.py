"""gRPC plumbing shared by the services: a server with health, identity and error mapping; client channels.

Every call between mailblast processes runs over mutual TLS. Each process holds a certificate from the
installation's CA naming it with one URI SAN, spiffe://mailblast/<name>; a server accepts only the
callers its entry in ALLOWED_CALLERS names, and only assertions (x-mailblast-identity) that the
calling certificate's service issued for this very service.

Over 400 lines, on purpose: the server's identity checks and the clients' identity assertions are the two
halves of one protocol (x-mailblast-identity), kept side by side so that a change to one is seen with the other.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

from services.common import errors, metrics, settings
from services.common.identity import (
    AUTHORIZATION_HEADER,
    CERTIFICATE_IDENTITY_PREFIX,
    IDENTITY_HEADER,
    IdentitySigner,
    Principal,
    peek_principal,
    reset_principal,
    set_principal,
)
from services.common.log import get_logger
from services.common.settings import ConfigError

log = get_logger(__name__)

# The console passes its end user's address on every call in this metadata key, for the audit log.
SOURCE_IP_HEADER = "x-mailblast-source-ip"

# Resolves a bearer API token to its principal (auth answers this for everyone else).
TokenResolver = Callable[[str], Awaitable[Principal]]

# Any certificate of the installation's CA may ask whether a service is up: the answer tells nothing.
_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)
_MAX_MESSAGE = 64 * 1024 * 1024

# Who may call whom, by the identity in the caller's certificate, from the stubs each caller builds:
# gateway, the console: auth, lists, campaigns. cli, the `mailblast` command and other tools with a
# user's API token: lists, campaigns, and auth (which answers tokens itself, so that tokens can be
# managed with a token). dev-run, `make run`: auth, to bootstrap the first organisation (Kubernetes
# issues no such certificate). The services: tokens (auth), recipients (lists). The sender calls no
# service: campaign states and suppressions reach its copies over NATS. sender's and bounce's read-only
# APIs have no caller among the services yet; they are open to the console and the command, as their
# protos intend.
ALLOWED_CALLERS: dict[str, frozenset[str]] = {
    "auth": frozenset({"gateway", "lists", "campaigns", "bounce", "cli", "dev-run"}),
    "lists": frozenset({"gateway", "campaigns", "cli"}),
    "campaigns": frozenset({"gateway", "cli"}),
    "sender": frozenset({"gateway", "cli"}),
    "bounce": frozenset({"gateway", "cli"}),
}

TLS_SETTINGS = (settings.TLS_CA_FILE.env, settings.TLS_CERT_FILE.env, settings.TLS_KEY_FILE.env)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files a process proves itself with: the CA it trusts, its certificate and its key.

    The names are those cert-manager writes into a Secret (ca.crt, tls.crt, tls.key), but any paths do.
    """

    # No plaintext fallback: all three are required, and a service without its certificate does not start.
    ca_file: str = settings.TLS_CA_FILE.field()
    cert_file: str = settings.TLS_CERT_FILE.field()
    key_file: str = settings.TLS_KEY_FILE.field()

    @classmethod
    def from_env(cls) -> TlsFiles:
        """Read MAILBLAST_TLS_CA_FILE, MAILBLAST_TLS_CERT_FILE and MAILBLAST_TLS_KEY_FILE (all required)."""
        return settings.read(cls)

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        """The files of a folder in cert-manager's shape (ca.crt, tls.crt, tls.key)."""
        return cls(str(directory / "ca.crt"), str(directory / "tls.crt"), str(directory / "tls.key"))

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The CA bundle, certificate chain and key, as bytes; a missing file is named with its setting."""
        contents = []
        for setting, path in zip(TLS_SETTINGS, (self.ca_file, self.cert_file, self.key_file), strict=True):
            try:
                contents.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"{setting}={path!r} cannot be read: {exc.strerror}") from None
        return contents[0], contents[1], contents[2]

    def identity(self) -> str:
        """The mailblast name the certificate carries (its spiffe://mailblast/<name> URI SAN)."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.read()[1])
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
        except (ValueError, x509.ExtensionNotFound):
            uris = []
        names = [uri.removeprefix(CERTIFICATE_IDENTITY_PREFIX) for uri in uris]
        if len(uris) != 1 or not uris[0].startswith(CERTIFICATE_IDENTITY_PREFIX):
            raise ConfigError(
                f"MAILBLAST_TLS_CERT_FILE={self.cert_file!r} must name one identity as a URI SAN "
                f"{CERTIFICATE_IDENTITY_PREFIX}<name> (found {names or 'none'})"
            )
        return names[0]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: trust only the CA, present this certificate."""
        ca, chain, key = self.read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that refuse, during the handshake, any client without a certificate of the CA."""
        ca, chain, key = self.read()
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)


class ServiceIdentity:
    """This process as the others see it: its name, its certificate, and the signer of its assertions."""

    def __init__(self, service: str, tls: TlsFiles, internal_key: bytes) -> None:
        named = tls.identity()
        if named != service:
            raise ConfigError(
                f"MAILBLAST_TLS_CERT_FILE={tls.cert_file!r} is the certificate of {named!r}, not of {service!r}"
            )
        self.service = service
        self.tls = tls
        self.signer = IdentitySigner(internal_key)

    def assertion(self, principal: Principal, audience: str) -> str:
        """The signed identity of `principal`, relayed by this service, for a call to `audience`."""
        return self.signer.sign(principal.acting_as(self.service), audience)


def peer_identity(context: grpc.aio.ServicerContext) -> str:
    """The mailblast name in the calling certificate, or "" when it names none."""
    # gRPC reports a SPIFFE ID only when the certificate carries exactly one URI SAN.
    values = context.auth_context().get("peer_spiffe_id") or [b""]
    uri = values[0].decode("utf-8", "replace")
    return uri.removeprefix(CERTIFICATE_IDENTITY_PREFIX) if uri.startswith(CERTIFICATE_IDENTITY_PREFIX) else ""


def _status_for(exc: errors.ServiceError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code_name, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, exc: errors.ServiceError) -> None:
    # The details stay plain English for API and CLI users; the template travels beside them so the
    # console can say the same in the user's language.
    await context.abort(_status_for(exc), str(exc), trailing_metadata=errors.explanation_metadata(exc))


class _IdentityInterceptor(grpc.aio.ServerInterceptor):
    """Admits only allowed callers, establishes the principal for every call, turns domain errors into codes."""

    def __init__(self, me: ServiceIdentity, callers: frozenset[str], resolve_token: TokenResolver | None) -> None:
        self._me = me
        self._callers = callers
        self._resolve_token = resolve_token

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        caller = peer_identity(context)
        if caller not in self._callers:
            raise errors.PermissionDenied(
                "the certificate of %(caller)s may not call %(service)s",
                caller=caller or "an unnamed peer",
                service=self._me.service,
            )
        md = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        if IDENTITY_HEADER in md:
            principal = self._me.signer.verify(str(md[IDENTITY_HEADER]), audience=self._me.service)
            if principal.service != caller:
                # Whoever holds the internal key must still hold the certificate of the service it claims.
                raise errors.Unauthenticated(
                    "the service identity was issued by %(issuer)s but the certificate is of %(caller)s",
                    issuer=principal.service or "no service",
                    caller=caller,
                )
            return principal
        auth = str(md.get(AUTHORIZATION_HEADER, ""))
        if auth.lower().startswith("bearer ") and self._resolve_token is not None:
            return await self._resolve_token(auth[7:].strip())
        raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <API token>'")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_PUBLIC_PREFIXES):
            return handler
        outer = self

        async def establish(context) -> contextvars.Token:
            try:
                return set_principal(await outer._principal(context))
            except errors.ServiceError as exc:
                await _abort(context, exc)
                raise

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                token = await establish(context)
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
                token = await establish(context)
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

        # No mailblast API streams requests; such a method would otherwise run without the checks above.
        async def refuse(request_iterator, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "client-streaming calls are not served")

        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                refuse, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times every call and counts its status code (the identity checks' refusals included)."""

    def __init__(self, service: str) -> None:
        self._service = service

    def _observe(self, method: str, context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        metrics.GRPC_SECONDS.labels(self._service, method, name).observe(time.perf_counter() - started)
        if name != "OK":
            metrics.GRPC_ERRORS.labels(self._service, method, name).inc()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        outer = self
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                started, failed = time.perf_counter(), True
                try:
                    reply = await inner(request, context)
                    failed = False
                    return reply
                finally:
                    outer._observe(method, context, started, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                started, failed = time.perf_counter(), True
                try:
                    result = inner_stream(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                    failed = False
                finally:
                    outer._observe(method, context, started, failed)

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
    """A started gRPC server with the health service; `port` is the bound port, `health_port` the plaintext one."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health: health_aio.HealthServicer,
        health_server: grpc.aio.Server | None = None,
        health_port: int = 0,
        metrics_server: metrics.MetricsServer | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health
        self._health_server = health_server
        self.health_port = health_port
        self._metrics_server = metrics_server
        self.metrics_port = metrics_server.port if metrics_server is not None else 0

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, then stop accepting calls and finish those under way."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(grace)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.stop)


async def start_grpc_server(
    bind: str,
    register: Callable[[grpc.aio.Server], Iterable[str]],
    me: ServiceIdentity,
    resolve_token: TokenResolver | None = None,
    health_bind: str = "",
    metrics_bind: str = "",
) -> GrpcServer:
    """Serve over mutual TLS on `bind` ("host:port", port 0 for any); `register` adds servicers, returns their names.

    With `health_bind`, a second, plaintext listener there answers grpc.health.v1 and nothing else:
    Kubernetes' native gRPC probes cannot speak TLS, and the health status is all it reveals. With
    `metrics_bind`, the process's Prometheus metrics are served there over plain HTTP (`metrics_port`).
    """
    server = grpc.aio.server(
        interceptors=[
            _MetricsInterceptor(me.service),
            aio_server_interceptor(),
            _IdentityInterceptor(me, ALLOWED_CALLERS[me.service], resolve_token),
        ],
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE)],
    )
    names = list(register(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port(bind, me.tls.server_credentials())
    if port == 0:
        raise RuntimeError(f"could not bind gRPC server to {bind}")
    health_server = None
    health_port = 0
    if health_bind:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        health_port = health_server.add_insecure_port(health_bind)
        if health_port == 0:
            raise RuntimeError(f"could not bind the gRPC health listener to {health_bind}")
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ["", *names]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcServer(server, port, health, health_server, health_port, metrics.serve(metrics_bind))


class _OutgoingIdentity:
    """Adds the signed identity of the current principal, relayed by this service, for the callee, to each call."""

    def __init__(self, me: ServiceIdentity, audience: str) -> None:
        self._me = me
        self._audience = audience

    def _details(self, details):
        principal = peek_principal()
        metadata = list(details.metadata or [])
        if principal is None or any(k == IDENTITY_HEADER for k, _ in metadata):
            return details
        metadata.append((IDENTITY_HEADER, self._me.assertion(principal, self._audience)))
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


class _BlockingOutgoingIdentity(_OutgoingIdentity, grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


def _with_metadata(details, metadata):
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def service_channel(target: str, callee: str, me: ServiceIdentity) -> grpc.aio.Channel:
    """A mutual-TLS channel to the mailblast service `callee` that carries the current caller's identity."""
    return grpc.aio.secure_channel(
        target,
        me.tls.channel_credentials(),
        interceptors=[
            *aio_client_interceptors(),
            _OutgoingIdentityUnary(me, callee),
            _OutgoingIdentityStream(me, callee),
        ],
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE)],
    )


def blocking_service_channel(target: str, callee: str, me: ServiceIdentity) -> grpc.Channel:
    """A blocking mutual-TLS channel to `callee` that carries the identity of the principal set with set_principal."""
    channel = grpc.secure_channel(
        target, me.tls.channel_credentials(), options=[("grpc.max_receive_message_length", _MAX_MESSAGE)]
    )
    return grpc.intercept_channel(channel, _BlockingOutgoingIdentity(me, callee))


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


def auth_token_resolver(channel: grpc.aio.Channel, me: ServiceIdentity) -> TokenResolver:
    """A resolver that asks the auth service (over `channel`), as this service, who a bearer token belongs to."""
    from mailblast.v1 import auth_pb2, auth_pb2_grpc

    stub = auth_pb2_grpc.AuthServiceStub(channel)
    caller = Principal(organization_id=0, service=me.service)

    async def resolve(token: str) -> Principal:
        try:
            reply = await stub.Authenticate(
                auth_pb2.AuthenticateRequest(token=token),
                metadata=[(IDENTITY_HEADER, me.assertion(caller, "auth"))],
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
