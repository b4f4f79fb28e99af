"""The AuthService servicer: protobuf in and out, the work done by accounts, tokens and the store.

Over 400 lines, on purpose: AuthService has 26 RPCs and each handler is only the translation (scope check,
request to domain call, result to protobuf); split across files they would share the servicer's state as
mixins do, which issue 10 removes elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mailblast.v1 import auth_pb2, auth_pb2_grpc

from services.auth import accounts, convert, passwords, tokens
from services.auth.authenticate import TokenAuthenticator
from services.auth.records import Account, ApiToken, AuditEvent, Organization, SessionRow, User
from services.auth.security import AccountSecurity, LoginAttempt, LoginStatus, SessionStatus
from services.auth.store import AuthStore
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.identity import Principal, require_scope, require_service
from services.common.log import get_logger

log = get_logger(__name__)


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


# The gateway passes the end user's address on admin calls in this metadata key, for the audit log.
SOURCE_IP_HEADER = "x-mailblast-source-ip"
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
MAX_AUDIT_DETAIL = 16 * 1024


def _organization(org: Organization, require_totp: bool | None = None) -> auth_pb2.Organization:
    reply = auth_pb2.Organization(id=org.id, name=org.name, created_at=_ts(org.created_at))
    if require_totp is not None:
        reply.settings.require_totp = require_totp
    return reply


def _user(user: User | Account) -> auth_pb2.User:
    if isinstance(user, Account):
        user = user.user()
    return auth_pb2.User(
        id=user.id,
        organization_id=user.organization_id,
        login=user.login,
        email=user.email,
        role=user.role,
        created_at=_ts(user.created_at),
        has_password=user.has_password,
        totp_enabled=user.totp_enabled,
        locked_until=_ts(user.locked_until),
        disabled_at=_ts(user.disabled_at),
    )


def _audit(event: AuditEvent) -> auth_pb2.AuditEvent:
    return auth_pb2.AuditEvent(
        id=event.id,
        organization_id=event.organization_id or 0,
        at=_ts(event.at),
        user_id=event.user_id or 0,
        source_ip=event.source_ip,
        action=event.action,
        target=event.target,
        detail_json=json.dumps(event.detail, ensure_ascii=False, sort_keys=True),
        service=event.service,
        api_token_id=event.api_token_id or 0,
    )


def _source_ip(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == SOURCE_IP_HEADER:
            return str(value)[:100]
    return ""


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


def _token_owner(principal: Principal) -> int:
    """Whose tokens the caller manages: 0 for everyone's (an admin), else their own user id."""
    if principal.has_scope("admin"):
        return 0
    if principal.user_id <= 0:
        raise PermissionDenied("an API token belongs to a user: call as the user it is for")
    return principal.user_id


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Organisations, users and API tokens over gRPC."""

    def __init__(self, store: AuthStore, authenticator: TokenAuthenticator, security: AccountSecurity) -> None:
        self._store = store
        self._authenticate = authenticator
        self._security = security
        # ForgotPassword's work runs after its answer; the tasks are kept so they are not collected mid-way.
        self._background: set[asyncio.Task] = set()

    async def Bootstrap(self, request: auth_pb2.BootstrapRequest, context: grpc.aio.ServicerContext):
        """Create the first organisation, owner and admin token, once."""
        caller = require_service()
        name = accounts.check_text("organization_name", request.organization_name, accounts.MAX_NAME)
        login = accounts.check_login(request.admin_login)
        email = accounts.check_email(request.admin_email)
        issued = tokens.issue()
        password_hash = None
        if request.admin_password:
            normalized = await passwords.check_new_async(request.admin_password, login, email, name)
            password_hash = await passwords.hash_async(normalized)
        org, user, _ = await self._store.bootstrap(name, login, email, issued.prefix, issued.secret_hash)
        if password_hash is not None:
            await self._store.set_password_hash(user.id, password_hash)
            user = dataclasses.replace(user, has_password=True)
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
            token_id=principal.token_id,
        )

    async def CreateUser(self, request: auth_pb2.CreateUserRequest, context: grpc.aio.ServicerContext):
        """Add a user to the caller's organisation."""
        principal = require_scope("admin")
        role = accounts.check_role(request.role)
        if role == "owner" and principal.role != "owner":
            raise PermissionDenied("only an owner can make another user owner")
        user = await self._store.create_user(
            principal.organization_id,
            accounts.check_login(request.login),
            accounts.check_email(request.email),
            role,
        )
        ip = _source_ip(context)
        await self._store.audit(
            principal.organization_id, principal.user_id, "user.created", f"user:{user.id}", {"role": role}, ip,
            principal.service,
        )  # fmt: skip
        if request.send_invite:
            account = await self._store.account(user.id)
            assert account is not None
            await self._security.send_password_link(account, True, principal.user_id, ip)
        return _user(user)

    async def ListUsers(self, request: auth_pb2.ListUsersRequest, context: grpc.aio.ServicerContext):
        """The caller organisation's users."""
        principal = require_scope("admin")
        users = await self._store.list_users(principal.organization_id)
        return auth_pb2.ListUsersResponse(users=[_user(u) for u in users])

    async def CreateApiToken(self, request: auth_pb2.CreateApiTokenRequest, context: grpc.aio.ServicerContext):
        """Issue a token for the calling user, no stronger than their role; the secret is in this reply only."""
        principal = require_scope("read")
        # A token for someone else would let its maker act as them (an admin as the owner): never.
        if principal.user_id <= 0:
            raise PermissionDenied("an API token belongs to a user: call as the user it is for")
        if request.user_id and request.user_id != principal.user_id:
            raise PermissionDenied(
                "an API token is only ever issued to its creator: user %(user)s must create their own",
                user=request.user_id,
            )
        user = await self._store.get_user(principal.organization_id, principal.user_id)
        if user is None or user.disabled_at is not None:
            raise PermissionDenied("an API token belongs to a user: call as the user it is for")
        name = accounts.check_text("token name", request.name, accounts.MAX_NAME)
        scopes = accounts.check_scopes(list(request.scopes), user.role)
        for scope in scopes:
            if not principal.has_scope(scope):
                raise PermissionDenied("scope %(scope)r is more than the credentials of this call grant", scope=scope)
        issued = tokens.issue()
        token = await self._store.create_token(
            principal.organization_id, user.id, name, scopes, issued.prefix, issued.secret_hash
        )
        log.info("api token issued", token_id=token.id, user_id=user.id, scopes=list(scopes))
        await self._store.audit(
            principal.organization_id, principal.user_id, "api_token.created", f"api_token:{token.id}",
            {"user_id": user.id, "scopes": list(scopes)}, _source_ip(context), principal.service,
        )  # fmt: skip
        return auth_pb2.CreateApiTokenResponse(token=_token(token), secret=issued.text)

    async def ListApiTokens(self, request: auth_pb2.ListApiTokensRequest, context: grpc.aio.ServicerContext):
        """The tokens of the caller's organisation (an admin) or the caller's own, without secrets."""
        principal = require_scope("read")
        found = await self._store.list_tokens(principal.organization_id, _token_owner(principal))
        return auth_pb2.ListApiTokensResponse(tokens=[_token(t) for t in found])

    async def RevokeApiToken(self, request: auth_pb2.RevokeApiTokenRequest, context: grpc.aio.ServicerContext):
        """Revoke a token of the caller's organisation (an admin) or one of the caller's own."""
        principal = require_scope("read")
        token = await self._store.revoke_token(principal.organization_id, request.token_id, _token_owner(principal))
        if token is None:
            raise NotFound("no API token %(token)s in your organisation", token=request.token_id)
        log.info("api token revoked", token_id=token.id)
        await self._store.audit(
            principal.organization_id, principal.user_id, "api_token.revoked", f"api_token:{token.id}",
            source_ip=_source_ip(context), service=principal.service,
        )  # fmt: skip
        return _token(token)

    # -- account security (see the comments in auth.proto)

    async def Login(self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext):
        """Check credentials and open a session."""
        require_service()
        outcome = await self._security.login(
            LoginAttempt(
                login=request.login,
                password=request.password,
                totp_code=request.totp_code,
                recovery_code=request.recovery_code,
                source_ip=request.source_ip[:100],
                user_agent=request.user_agent,
                challenge_token=request.challenge_token,
                device_cookie=request.device_cookie,
            )
        )
        reply = auth_pb2.LoginResponse(
            status=convert.login_status(outcome.status), idle_timeout_seconds=self._security.idle_expiry_seconds
        )
        shows_user = outcome.status in (LoginStatus.OK, LoginStatus.TOTP_SETUP_REQUIRED, LoginStatus.TOTP_REQUIRED)
        if outcome.account is not None and shows_user:
            reply.user.CopyFrom(_user(outcome.account))
        if outcome.session is not None:
            reply.session_token = outcome.session_token
            reply.session_id = outcome.session.id
            reply.absolute_expires_at.CopyFrom(_ts(self._security.absolute_expiry(outcome.session)))
        reply.challenge_token = outcome.challenge_token
        reply.device_cookie = outcome.device_cookie
        return reply

    def _session(self, row: SessionRow, current_id: int = 0, touched: bool = False) -> auth_pb2.Session:
        return auth_pb2.Session(
            id=row.id,
            created_at=_ts(row.created_at),
            last_seen_at=_ts(row.now if touched else row.last_seen_at),
            absolute_expires_at=_ts(self._security.absolute_expiry(row)),
            idle_expires_at=_ts(self._security.idle_expiry(row, row.now if touched else None)),
            source_ip=row.source_ip,
            user_agent=row.user_agent,
            current=row.id == current_id,
        )

    async def GetSession(self, request: auth_pb2.GetSessionRequest, context: grpc.aio.ServicerContext):
        """The session's principal, or why it is no longer valid."""
        require_service()
        resolved = await self._security.resolve(request.session_token)
        reply = auth_pb2.GetSessionResponse(status=convert.session_status(resolved.status))
        if resolved.status in (SessionStatus.VALID, SessionStatus.TOTP_SETUP_REQUIRED):
            assert resolved.account is not None and resolved.session is not None
            account = resolved.account
            scopes = accounts.ROLE_SCOPES[account.role] if resolved.status is SessionStatus.VALID else ()
            reply.principal.CopyFrom(
                auth_pb2.Principal(
                    organization_id=account.organization_id, user_id=account.id, scopes=scopes, role=account.role
                )
            )
            reply.user.CopyFrom(_user(account))
            reply.session.CopyFrom(self._session(resolved.session, resolved.session.id, touched=True))
        return reply

    async def Logout(self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext):
        """Revoke a session."""
        require_service()
        await self._security.logout(request.session_token)
        return auth_pb2.LogoutResponse()

    async def ListSessions(self, request: auth_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext):
        """The live sessions of the session's user."""
        require_service()
        current, account = await self._security.require_session(request.session_token)
        live = await self._security.live_sessions(account.id)
        return auth_pb2.ListSessionsResponse(sessions=[self._session(r, current.id) for r in live])

    async def RevokeSession(self, request: auth_pb2.RevokeSessionRequest, context: grpc.aio.ServicerContext):
        """Revoke one of the user's own sessions."""
        require_service()
        _, account = await self._security.require_session(request.session_token)
        if not await self._store.revoke_session(request.session_id, account.id, "revoked_by_user"):
            raise NotFound("you have no live session %(session)s", session=request.session_id)
        await self._store.audit(
            account.organization_id, account.id, "session.revoked", f"session:{request.session_id}",
            source_ip=_source_ip(context),
        )  # fmt: skip
        return auth_pb2.RevokeSessionResponse()

    async def ChangePassword(self, request: auth_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext):
        """Change the session user's password; other sessions are revoked."""
        require_service()
        revoked = await self._security.change_password(
            request.session_token, request.current_password, request.new_password, _source_ip(context)
        )
        return auth_pb2.ChangePasswordResponse(revoked_sessions=revoked)

    async def _org_account(self, principal: Principal, user_id: int) -> Account:
        account = await self._store.account(user_id)
        if account is None or account.organization_id != principal.organization_id:
            raise NotFound("no user %(user)s in your organisation", user=user_id)
        return account

    async def RequestPasswordReset(
        self, request: auth_pb2.RequestPasswordResetRequest, context: grpc.aio.ServicerContext
    ):
        """Mail a user of the caller's organisation a password link."""
        principal = require_scope("admin")
        account = await self._org_account(principal, request.user_id)
        if account.disabled_at is not None:
            raise FailedPrecondition("user %(login)r is disabled", login=account.login)
        expires_at = await self._security.send_password_link(account, False, principal.user_id, _source_ip(context))
        return auth_pb2.RequestPasswordResetResponse(expires_at=_ts(expires_at))

    async def ResetPassword(self, request: auth_pb2.ResetPasswordRequest, context: grpc.aio.ServicerContext):
        """Consume a password link and set the password."""
        require_service()
        account = await self._security.reset_password(request.token, request.new_password, _source_ip(context))
        return auth_pb2.ResetPasswordResponse(user=_user(account))

    async def Unlock(self, request: auth_pb2.UnlockRequest, context: grpc.aio.ServicerContext):
        """Lift a lockout."""
        principal = require_scope("admin")
        user = await self._store.unlock(principal.organization_id, request.user_id)
        if user is None:
            raise NotFound("no user %(user)s in your organisation", user=request.user_id)
        await self._store.audit(
            principal.organization_id, principal.user_id, "user.unlocked", f"user:{user.id}",
            source_ip=_source_ip(context), service=principal.service,
        )  # fmt: skip
        return _user(user)

    async def BeginTotpSetup(self, request: auth_pb2.BeginTotpSetupRequest, context: grpc.aio.ServicerContext):
        """A new TOTP secret for the session's user."""
        require_service()
        secret, uri = await self._security.begin_totp(request.session_token)
        return auth_pb2.BeginTotpSetupResponse(secret=secret, provisioning_uri=uri)

    async def ConfirmTotp(self, request: auth_pb2.ConfirmTotpRequest, context: grpc.aio.ServicerContext):
        """Enable TOTP and hand out recovery codes."""
        require_service()
        codes, token = await self._security.confirm_totp(request.session_token, request.code, _source_ip(context), "")
        return auth_pb2.ConfirmTotpResponse(recovery_codes=codes, session_token=token)

    async def DisableTotp(self, request: auth_pb2.DisableTotpRequest, context: grpc.aio.ServicerContext):
        """Turn TOTP off."""
        require_service()
        account = await self._security.disable_totp(request.session_token, request.password, _source_ip(context))
        return _user(account)

    async def GetOrganization(self, request: auth_pb2.GetOrganizationRequest, context: grpc.aio.ServicerContext):
        """The caller's organisation with its settings."""
        principal = require_scope("admin")
        found = await self._store.organization(principal.organization_id)
        if found is None:
            raise NotFound("your organisation no longer exists")
        return _organization(*found)

    async def SetOrganizationSettings(
        self, request: auth_pb2.SetOrganizationSettingsRequest, context: grpc.aio.ServicerContext
    ):
        """Change the organisation's security settings."""
        principal = require_scope("admin")
        if await self._store.organization(principal.organization_id) is None:
            raise NotFound("your organisation no longer exists")
        org, require_totp = await self._store.set_require_totp(principal.organization_id, request.settings.require_totp)
        await self._store.audit(
            org.id, principal.user_id, "organization.settings_changed", f"organization:{org.id}",
            {"require_totp": require_totp}, _source_ip(context), principal.service,
        )  # fmt: skip
        return _organization(org, require_totp)

    async def UpdateUserRole(self, request: auth_pb2.UpdateUserRoleRequest, context: grpc.aio.ServicerContext):
        """Change a user's role."""
        principal = require_scope("admin")
        role = accounts.check_role(request.role)
        account = await self._org_account(principal, request.user_id)
        if "owner" in (role, account.role) and principal.role != "owner":
            raise PermissionDenied("only an owner can grant or take away the owner role")
        user = await self._store.change_role_or_disable(principal.organization_id, account.id, role)
        if user is None:
            raise NotFound("no user %(user)s in your organisation", user=request.user_id)
        await self._store.audit(
            principal.organization_id, principal.user_id, "user.role_changed", f"user:{user.id}",
            {"from": account.role, "to": role}, _source_ip(context), principal.service,
        )  # fmt: skip
        return _user(user)

    async def DisableUser(self, request: auth_pb2.DisableUserRequest, context: grpc.aio.ServicerContext):
        """Disable a user: sessions revoked, tokens refused."""
        principal = require_scope("admin")
        account = await self._org_account(principal, request.user_id)
        if account.role == "owner" and principal.role != "owner":
            raise PermissionDenied("only an owner can disable an owner")
        user = await self._store.change_role_or_disable(principal.organization_id, account.id, None)
        if user is None:
            raise NotFound("no user %(user)s in your organisation", user=request.user_id)
        await self._store.audit(
            principal.organization_id, principal.user_id, "user.disabled", f"user:{user.id}",
            source_ip=_source_ip(context), service=principal.service,
        )  # fmt: skip
        return _user(user)

    async def RecordAuditEvent(self, request: auth_pb2.RecordAuditEventRequest, context: grpc.aio.ServicerContext):
        """Record another service's event in the relayed principal's organisation."""
        principal = require_service()
        if principal.organization_id <= 0:
            raise InvalidArgument("an audit event needs the organisation's principal: relay the user's identity")
        if not _ACTION.match(request.action) or len(request.action) > 100:
            raise InvalidArgument("action %(action)r must be lower-case words joined by dots", action=request.action)
        detail: dict = {}
        if request.detail_json:
            if len(request.detail_json) > MAX_AUDIT_DETAIL:
                raise InvalidArgument("detail_json is longer than %(limit)s bytes", limit=MAX_AUDIT_DETAIL)
            try:
                detail = json.loads(request.detail_json)
            except ValueError:
                raise InvalidArgument("detail_json is not JSON") from None
            if not isinstance(detail, dict):
                raise InvalidArgument("detail_json must be a JSON object")
        if await self._store.organization(principal.organization_id) is None:
            raise NotFound("no organisation %(organization)s", organization=principal.organization_id)
        event = await self._store.audit(
            principal.organization_id, principal.user_id, request.action,
            accounts.check_text("target", request.target, 500) if request.target else "", detail,
            request.source_ip[:100], principal.service,
        )  # fmt: skip
        return _audit(event)

    async def ListAuditEvents(self, request: auth_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext):
        """The organisation's audit events, newest first, a page at a time."""
        principal = require_scope("admin")
        size = request.page_size or 100
        if not 0 < size <= 1000:
            raise InvalidArgument("page_size must be between 1 and 1000")
        before = None
        if request.page_token:
            if not request.page_token.isdigit():
                raise InvalidArgument("page_token is not one this service handed out")
            before = int(request.page_token)
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        until = request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None
        rows = await self._store.list_audit(principal.organization_id, since, until, request.action, size + 1, before)
        reply = auth_pb2.ListAuditEventsResponse(events=[_audit(e) for e in rows[:size]])
        if len(rows) > size:
            reply.next_page_token = str(rows[size - 1].id)
        return reply

    async def ForgotPassword(self, request: auth_pb2.ForgotPasswordRequest, context: grpc.aio.ServicerContext):
        """Start mailing a reset link for this login, if it exists; answer at once, the same either way."""
        require_service()
        task = asyncio.create_task(self._forgot(request.login[:200], request.source_ip[:100]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return auth_pb2.ForgotPasswordResponse()

    async def _forgot(self, login: str, source_ip: str) -> None:
        try:
            await self._security.forgot_password(login, source_ip)
        except Exception:
            log.exception("self-service password reset failed")
