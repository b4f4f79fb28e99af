"""The AuthService servicer: protobuf in and out, the work done by accounts, tokens and the store."""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import auth_pb2, auth_pb2_grpc

from services.auth import accounts, tokens
from services.auth.authenticate import TokenAuthenticator
from services.auth.store import ApiToken, AuthStore, Organization, User
from services.common.errors import NotFound
from services.common.identity import require_scope, require_service
from services.common.log import get_logger

log = get_logger(__name__)


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _organization(org: Organization) -> auth_pb2.Organization:
    return auth_pb2.Organization(id=org.id, name=org.name, created_at=_ts(org.created_at))


def _user(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id,
        organization_id=user.organization_id,
        login=user.login,
        email=user.email,
        role=user.role,
        created_at=_ts(user.created_at),
    )


def _token(token: ApiToken) -> auth_pb2.ApiToken:
    return auth_pb2.ApiToken(
        id=token.id,
        user_id=token.user_id,
        name=token.name,
        scopes=token.scopes,
        prefix=token.prefix,
        created_at=_ts(token.created_at),
        last_used_at=_ts(token.last_used_at),
        revoked_at=_ts(token.revoked_at),
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Organisations, users and API tokens over gRPC."""

    def __init__(self, store: AuthStore, authenticator: TokenAuthenticator) -> None:
        self._store = store
        self._authenticate = authenticator

    async def Bootstrap(self, request: auth_pb2.BootstrapRequest, context: grpc.aio.ServicerContext):
        """Create the first organisation, owner and admin token, once."""
        caller = require_service()
        name = accounts.check_text("organization_name", request.organization_name, accounts.MAX_NAME)
        login = accounts.check_login(request.admin_login)
        email = accounts.check_email(request.admin_email)
        issued = tokens.issue()
        org, user, _ = await self._store.bootstrap(name, login, email, issued.prefix, issued.secret_hash)
        log.info("bootstrapped", organization_id=org.id, user_id=user.id, by=caller.service)
        return auth_pb2.BootstrapResponse(organization=_organization(org), user=_user(user), api_token=issued.text)

    async def Authenticate(self, request: auth_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext):
        """Resolve a bearer token for another service."""
        require_service()
        principal = await self._authenticate(request.token)
        return auth_pb2.Principal(
            organization_id=principal.organization_id,
            user_id=principal.user_id,
            scopes=principal.scopes,
            role=principal.role,
        )

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: grpc.aio.ServicerContext):
        """Add a user to the caller's organisation."""
        principal = require_scope("admin")
        user = await self._store.create_user(
            principal.organization_id,
            accounts.check_login(request.login),
            accounts.check_email(request.email),
            accounts.check_role(request.role),
        )
        return _user(user)

    async def ListUsers(self, request: auth_pb2.ListUsersRequest, context: grpc.aio.ServicerContext):
        """The caller organisation's users."""
        principal = require_scope("admin")
        users = await self._store.list_users(principal.organization_id)
        return auth_pb2.ListUsersResponse(users=[_user(u) for u in users])

    async def CreateApiToken(self, request: auth_pb2.CreateApiTokenRequest, context: grpc.aio.ServicerContext):
        """Issue a token for a user of the caller's organisation; the secret is in this reply only."""
        principal = require_scope("admin")
        user = await self._store.get_user(principal.organization_id, request.user_id)
        if user is None:
            raise NotFound(f"no user {request.user_id} in your organisation")
        name = accounts.check_text("token name", request.name, accounts.MAX_NAME)
        scopes = accounts.check_scopes(list(request.scopes), user.role)
        issued = tokens.issue()
        token = await self._store.create_token(
            principal.organization_id, user.id, name, scopes, issued.prefix, issued.secret_hash
        )
        log.info("api token issued", token_id=token.id, user_id=user.id, scopes=list(scopes))
        return auth_pb2.CreateApiTokenResponse(token=_token(token), secret=issued.text)

    async def ListApiTokens(self, request: auth_pb2.ListApiTokensRequest, context: grpc.aio.ServicerContext):
        """The caller organisation's tokens, without secrets."""
        principal = require_scope("admin")
        found = await self._store.list_tokens(principal.organization_id)
        return auth_pb2.ListApiTokensResponse(tokens=[_token(t) for t in found])

    async def RevokeApiToken(self, request: auth_pb2.RevokeApiTokenRequest, context: grpc.aio.ServicerContext):
        """Revoke a token of the caller's organisation."""
        principal = require_scope("admin")
        token = await self._store.revoke_token(principal.organization_id, request.token_id)
        if token is None:
            raise NotFound(f"no API token {request.token_id} in your organisation")
        log.info("api token revoked", token_id=token.id)
        return _token(token)
