"""Account security: logins with lockout, device cookies and throttling, sessions, password links, TOTP.

Lockouts follow OWASP's device-cookie scheme: failures are counted per login and client. A browser that
logged in to the login before (a valid device cookie) is its own client, locked only by its own failures
and never throttled by its address; every other browser is one "unknown client" per login. While a client
is locked for a login, every try answers LOCKED without the password being checked, and still counts.
No grpc, no nats.

Over 400 lines, on purpose: logins, lockouts, sessions, password links and TOTP share one set of rules
(a reset clears lockouts and ends sessions, TOTP set-up runs in a set-up-only session) and are read together
when one of them changes.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.fernet import InvalidToken

from services.auth import notices, passwords, tokens, totp
from services.auth.config import Config
from services.auth.devices import DeviceCookies
from services.auth.records import Account, SessionRow
from services.auth.sealing import SecretBox
from services.auth.store import AuthStore
from services.common.clock import Clock, SystemClock
from services.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from services.common.log import get_logger

log = get_logger(__name__)

# Hands a notice to the senders (mailer.py: a TransactionalMessage on JetStream).
SendMail = Callable[[notices.Notice], Awaitable[None]]

CHALLENGE_SECONDS = 300
# AUTH_IP_FAILURES_PER_MINUTE counts the failures of this last stretch of time.
IP_WINDOW = timedelta(minutes=1)
# Every browser without a valid device cookie for the login.
UNKNOWN_CLIENT = ""
# Longer than any login can be; what is longer still is cut, not refused, so it fails like any other.
MAX_LOGIN_KEY = 200


class LoginStatus(enum.StrEnum):
    """Outcomes of a login (convert.py turns them into the proto's LoginStatus, by name)."""

    OK = "ok"
    TOTP_REQUIRED = "totp_required"
    FAILED = "failed"
    TOTP_SETUP_REQUIRED = "totp_setup_required"
    LOCKED = "locked"
    THROTTLED = "throttled"


class SessionStatus(enum.StrEnum):
    """Outcomes of resolving a session token (convert.py turns them into the proto's SessionStatus, by name)."""

    VALID = "valid"
    UNKNOWN = "unknown"
    IDLE_TIMEOUT = "idle_timeout"
    ABSOLUTE_TIMEOUT = "absolute_timeout"
    REVOKED = "revoked"
    TOTP_SETUP_REQUIRED = "totp_setup_required"


@dataclass(frozen=True)
class LoginAttempt:
    """What the console passes on from the login form."""

    login: str = ""
    password: str = ""
    totp_code: str = ""
    recovery_code: str = ""
    source_ip: str = ""
    user_agent: str = ""
    challenge_token: str = ""
    device_cookie: str = ""


@dataclass(frozen=True)
class LoginOutcome:
    """A login's answer; account is set whenever the caller may be told who it is."""

    status: LoginStatus
    account: Account | None = None
    session: SessionRow | None = None
    session_token: str = ""
    challenge_token: str = ""
    # A new device cookie for the browser, after a successful login.
    device_cookie: str = ""


@dataclass(frozen=True)
class ResolvedSession:
    """A session token's state, and its session and user when known."""

    status: SessionStatus
    session: SessionRow | None = None
    account: Account | None = None


def new_secret_token() -> tuple[str, bytes]:
    """A 256-bit random token and the SHA-256 to store."""
    text = secrets.token_urlsafe(32)
    return text, tokens.hash_secret(text)


class AccountSecurity:
    """The rules of logging in and staying logged in, over the auth store."""

    def __init__(self, store: AuthStore, config: Config, send_mail: SendMail, clock: Clock | None = None) -> None:
        self._store = store
        self._config = config
        self._send_mail = send_mail
        self._box = SecretBox(config.totp_keys)
        self._clock = clock or SystemClock()
        self._devices = DeviceCookies(config.internal_key)

    async def reseal_totp_secrets(self) -> int:
        """Seal secrets stored in plaintext and reseal older keys' seals under the first key; how many."""
        return await self._store.reseal_totp_secrets(self._box.reseal)

    def _open(self, account: Account, sealed: str) -> str | None:
        try:
            return self._box.open(sealed)
        except InvalidToken:
            # The user can still log in with a recovery code; the operator must restore the key.
            log.error("totp secret cannot be opened: was its key removed from AUTH_TOTP_KEYS?", user_id=account.id)
            return None

    # -- login

    async def login(self, attempt: LoginAttempt) -> LoginOutcome:
        """Check credentials and open a session; see LoginStatus in auth.proto for the answers."""
        now = self._clock.now()
        ip = attempt.source_ip
        challenge_id = 0
        if attempt.challenge_token:
            found = await self._store.find_user_token(tokens.hash_secret(attempt.challenge_token), ("login_challenge",))
            account = await self._store.account(found[1]) if found else None
            challenge_id = found[0] if found else 0
            login = account.login if account else ""
        else:
            login = attempt.login[:MAX_LOGIN_KEY]
            account = await self._store.account_by_login(login) if login else None
        nonce = self._devices.nonce(attempt.device_cookie, login) if login and attempt.device_cookie else None
        client = f"device:{nonce}" if nonce else UNKNOWN_CLIENT
        if (
            nonce is None
            and ip
            and await self._store.ip_failures(ip, now - IP_WINDOW) >= self._config.ip_failures_per_minute
        ):
            log.warning("login throttled", source_ip=ip)
            return LoginOutcome(LoginStatus.THROTTLED)
        if login and await self._store.locked_until(login, client, now) is not None:
            # Whatever the password: it is not even checked, so the answer cannot tell it. The try counts.
            return await self._fail(login, account, client, "locked", ip, now, LoginStatus.LOCKED)
        if attempt.challenge_token:
            password_ok = account is not None
        else:
            # Unknown logins and users without a password verify a dummy hash: same answer, same time.
            stored = account.password_hash if account else None
            password_ok = await passwords.verify_async(stored, attempt.password)
        if account is None:
            return await self._fail(login, None, client, "unknown_login", ip, now)
        if account.disabled_at is not None:
            return await self._fail(login, account, client, "disabled", ip, now)
        if not password_ok:
            return await self._fail(login, account, client, "wrong_password", ip, now)
        if account.totp_enabled:
            if not attempt.totp_code and not attempt.recovery_code:
                text, digest = new_secret_token()
                await self._store.create_user_token(account.id, "login_challenge", digest, CHALLENGE_SECONDS)
                return LoginOutcome(LoginStatus.TOTP_REQUIRED, account, challenge_token=text)
            if not await self._second_factor(account, attempt):
                return await self._fail(login, account, client, "wrong_code", ip, now)
            if challenge_id and not await self._store.consume_user_token(challenge_id):
                return await self._fail(login, account, client, "challenge_used", ip, now)
        if attempt.password and account.password_hash and passwords.needs_rehash(account.password_hash):
            new_hash = await passwords.hash_async(passwords.normalize(attempt.password))
            await self._store.set_password_hash(account.id, new_hash)
        await self._store.clear_login_failures(login, client)
        setup_only = account.require_totp and not account.totp_enabled
        text, digest = new_secret_token()
        session = await self._store.create_session(
            account, digest, setup_only, ip, attempt.user_agent[:500], self._clock.now()
        )
        await self._store.audit(
            account.organization_id,
            account.id,
            "login.succeeded",
            f"session:{session.id}",
            {"totp_setup_only": setup_only, "user_agent": attempt.user_agent[:500], "known_device": bool(nonce)},
            ip,
        )
        status = LoginStatus.TOTP_SETUP_REQUIRED if setup_only else LoginStatus.OK
        # A fresh nonce at every login: the device's old cookie and its count are done with.
        device_cookie = self._devices.issue(account.login)
        return LoginOutcome(status, account, session, session_token=text, device_cookie=device_cookie)

    async def _second_factor(self, account: Account, attempt: LoginAttempt) -> bool:
        if attempt.recovery_code:
            used = await self._store.use_recovery_code(account.id, totp.hash_recovery_code(attempt.recovery_code))
            if used:
                await self._store.audit(
                    account.organization_id, account.id, "totp.recovery_code_used", f"user:{account.id}",
                    source_ip=attempt.source_ip,
                )  # fmt: skip
            return used
        assert account.totp_secret is not None
        secret = self._open(account, account.totp_secret)
        if secret is None:
            return False
        step = totp.matching_step(secret, attempt.totp_code, account.totp_last_step)
        return step is not None and await self._store.accept_totp_step(account.id, step)

    async def _fail(
        self,
        login: str,
        account: Account | None,
        client: str,
        reason: str,
        ip: str,
        now: datetime,
        status: LoginStatus = LoginStatus.FAILED,
    ) -> LoginOutcome:
        """Count a failed try of the login from the client, audit it, and start a lock at the threshold."""
        strikes = None
        if login:
            strikes = await self._store.record_login_failure(
                login, client, now, self._config.lockout_threshold, self._config.lockout_seconds
            )
        detail: dict = {"reason": reason}
        if client.startswith("device:"):
            detail["known_device"] = True
        if account is None:
            # Unknown logins belong to no organisation, but still count against the source address.
            await self._store.audit(None, None, "login.failed", detail=detail, source_ip=ip, at=now)
        else:
            await self._store.audit(
                account.organization_id, account.id, "login.failed", f"user:{account.id}", detail, ip, at=now
            )
        if strikes is not None and strikes.locked_now and strikes.locked_until is not None:
            await self._locked(account, client, strikes.locked_until, ip)
        return LoginOutcome(status)

    async def _locked(self, account: Account | None, client: str, locked_until: datetime, ip: str) -> None:
        kind = client.split(":", 1)[0] or "unknown"
        log.warning(
            "login locked", user_id=account.id if account else None, clients=kind, until=locked_until.isoformat()
        )
        if account is None:
            return
        await self._store.audit(
            account.organization_id, account.id, "login.locked", f"user:{account.id}",
            {"locked_until": locked_until.isoformat(), "clients": kind}, ip,
        )  # fmt: skip
        message = notices.lockout(
            account.organization_id, account.id, account.login, account.email, locked_until, self._config.mail_from,
            kind,
        )  # fmt: skip
        try:
            await self._send_mail(message)
        except Exception:
            # The lock holds whether or not the notice goes out; the audit log has it either way.
            log.exception("lockout notice not published", user_id=account.id)

    async def _password_in_session(
        self, session: SessionRow, account: Account, password: str, reason: str, source_ip: str
    ) -> bool:
        """Whether a password given within a session is right; wrong ones lock that session's password checks."""
        now = self._clock.now()
        client = f"session:{session.id}"
        locked_until = await self._store.locked_until(account.login, client, now)
        if locked_until is not None:
            await self._fail(account.login, account, client, "locked", source_ip, now)
            raise FailedPrecondition(
                "too many wrong passwords in this session: try again after %(until)s",
                until=locked_until.strftime("%Y-%m-%d %H:%M UTC"),
            )
        if await passwords.verify_async(account.password_hash, password):
            return True
        await self._fail(account.login, account, client, reason, source_ip, now)
        return False

    # -- sessions

    async def resolve(self, token: str) -> ResolvedSession:
        """The state of a session token; a usable one is touched (its idle timer restarts)."""
        if not token:
            return ResolvedSession(SessionStatus.UNKNOWN)
        row = await self._store.session(tokens.hash_secret(token), self._clock.now())
        if row is None:
            return ResolvedSession(SessionStatus.UNKNOWN)
        account = await self._store.account(row.user_id)
        if row.revoked_at is not None or account is None or account.disabled_at is not None:
            return ResolvedSession(SessionStatus.REVOKED, row, account)
        if row.now >= self.absolute_expiry(row):
            return ResolvedSession(SessionStatus.ABSOLUTE_TIMEOUT, row, account)
        if row.now >= self.idle_expiry(row):
            return ResolvedSession(SessionStatus.IDLE_TIMEOUT, row, account)
        await self._store.touch_session(row.id, row.now)
        status = SessionStatus.TOTP_SETUP_REQUIRED if row.totp_setup_only else SessionStatus.VALID
        return ResolvedSession(status, row, account)

    async def live_sessions(self, account_id: int) -> list[SessionRow]:
        """The user's sessions neither revoked nor timed out, newest first."""
        rows = await self._store.user_sessions(account_id, self._clock.now())
        return [r for r in rows if r.now < self.absolute_expiry(r) and r.now < self.idle_expiry(r)]

    @property
    def idle_expiry_seconds(self) -> int:
        """AUTH_IDLE_TIMEOUT_SECONDS."""
        return self._config.idle_timeout_seconds

    def absolute_expiry(self, row: SessionRow) -> datetime:
        """When the session ends whatever happens."""
        return row.created_at + timedelta(seconds=self._config.absolute_timeout_seconds)

    def idle_expiry(self, row: SessionRow, now: datetime | None = None) -> datetime:
        """When the session ends unless used again (from `now` for a session just touched)."""
        return (now or row.last_seen_at) + timedelta(seconds=self._config.idle_timeout_seconds)

    async def require_session(self, token: str, allow_setup_only: bool = False) -> tuple[SessionRow, Account]:
        """The live session and its user, or refuse saying why (idle_timeout, absolute_timeout, revoked...)."""
        resolved = await self.resolve(token)
        allowed = {SessionStatus.VALID} | ({SessionStatus.TOTP_SETUP_REQUIRED} if allow_setup_only else set())
        if resolved.status not in allowed:
            if resolved.status is SessionStatus.TOTP_SETUP_REQUIRED:
                raise PermissionDenied("this session may only set up two-step verification (TOTP)")
            raise Unauthenticated("session is not valid: %(status)s; log in again", status=resolved.status.name.lower())
        assert resolved.session is not None and resolved.account is not None
        return resolved.session, resolved.account

    async def logout(self, token: str) -> None:
        """Revoke the session of this token, if any."""
        row = await self._store.session(tokens.hash_secret(token), self._clock.now()) if token else None
        if row is not None and row.revoked_at is None:
            await self._store.revoke_session(row.id, row.user_id, "logout")
            await self._store.audit(row.organization_id, row.user_id, "session.logout", f"session:{row.id}")

    # -- passwords

    async def change_password(self, token: str, current: str, new: str, source_ip: str) -> int:
        """Check the current password, set the new one, revoke the user's other sessions; return how many."""
        session, account = await self.require_session(token)
        if not await self._password_in_session(session, account, current, "wrong_current_password", source_ip):
            raise PermissionDenied("the current password is wrong")
        normalized = await passwords.check_new_async(new, account.login, account.email, account.organization_name)
        await self._store.set_password_hash(account.id, await passwords.hash_async(normalized))
        revoked = await self._store.revoke_user_sessions(account.id, "password_changed", except_session=session.id)
        await self._store.audit(
            account.organization_id, account.id, "password.changed", f"user:{account.id}",
            {"revoked_sessions": revoked}, source_ip,
        )  # fmt: skip
        return revoked

    async def forgot_password(self, login: str, source_ip: str) -> None:
        """Mail a reset link to the user with this login if it may log in; nothing is told either way."""
        account = await self._store.account_by_login(login.strip()) if login.strip() else None
        if account is None or account.disabled_at is not None:
            await self._store.audit(
                account.organization_id if account else None, account.id if account else None,
                "password.reset_refused", detail={"reason": "disabled" if account else "unknown_login"},
                source_ip=source_ip,
            )  # fmt: skip
            return
        await self.send_password_link(account, False, account.id, source_ip, self_service=True)

    async def send_password_link(
        self, account: Account, invite: bool, actor_id: int, source_ip: str, self_service: bool = False
    ) -> datetime:
        """Mail the user a single-use link to set a password; earlier links stop working."""
        text, digest = new_secret_token()
        ttl = self._config.invite_ttl_seconds if invite else self._config.reset_ttl_seconds
        kind = "invite" if invite else "reset"
        token_id, expires_at = await self._store.create_user_token(
            account.id, kind, digest, ttl, replaces=("invite", "reset")
        )
        url = f"{self._config.console_url}/reset/{text}"
        await self._send_mail(
            notices.password_link(
                account.organization_id, account.id, token_id, account.login, account.email, url, expires_at,
                invite, self._config.mail_from, self_service,
            )
        )  # fmt: skip
        action = "user.invited" if invite else "password.reset_requested"
        await self._store.audit(
            account.organization_id, actor_id, action, f"user:{account.id}",
            {"expires_at": expires_at.isoformat(), "self_service": self_service}, source_ip,
        )  # fmt: skip
        return expires_at

    async def reset_password(self, token: str, new: str, source_ip: str) -> Account:
        """Consume a reset or invitation token and set the password; clears the login's lockouts, revokes sessions."""
        found = await self._store.find_user_token(tokens.hash_secret(token), ("reset", "invite")) if token else None
        account = await self._store.account(found[1]) if found else None
        if found is None or account is None or account.disabled_at is not None:
            raise FailedPrecondition("this link has expired or was already used: ask an administrator for a new one")
        normalized = await passwords.check_new_async(new, account.login, account.email, account.organization_name)
        revoked = await self._store.reset_password(found[0], account.id, await passwords.hash_async(normalized))
        if revoked is None:
            raise FailedPrecondition("this link has expired or was already used: ask an administrator for a new one")
        await self._store.audit(
            account.organization_id, account.id, "password.reset", f"user:{account.id}",
            {"revoked_sessions": revoked}, source_ip,
        )  # fmt: skip
        updated = await self._store.account(account.id)
        assert updated is not None
        return updated

    # -- TOTP

    async def begin_totp(self, token: str) -> tuple[str, str]:
        """A new pending secret and its otpauth:// URI."""
        _, account = await self.require_session(token, allow_setup_only=True)
        if account.totp_enabled:
            raise FailedPrecondition("two-step verification is already on: turn it off first to change devices")
        secret = totp.new_secret()
        await self._store.set_totp_pending(account.id, self._box.seal(secret))
        return secret, totp.provisioning_uri(secret, account.login)

    async def confirm_totp(self, token: str, code: str, source_ip: str, user_agent: str) -> tuple[list[str], str]:
        """Enable TOTP when the code checks; return the recovery codes and, for a set-up-only session, a full one."""
        session, account = await self.require_session(token, allow_setup_only=True)
        if account.totp_pending_secret is None:
            raise FailedPrecondition("no two-step verification set-up is under way: begin it first")
        pending = self._open(account, account.totp_pending_secret)
        step = None if pending is None else totp.matching_step(pending, code, 0)
        if step is None:
            raise InvalidArgument("the code does not match: check the device's clock and type the current code")
        codes = totp.new_recovery_codes()
        hashes = [totp.hash_recovery_code(c) for c in codes]
        if not await self._store.enable_totp(account.id, account.totp_pending_secret, step, hashes):
            raise FailedPrecondition("the set-up changed meanwhile: begin it again")
        await self._store.audit(
            account.organization_id, account.id, "totp.enabled", f"user:{account.id}", source_ip=source_ip
        )
        new_token = ""
        if session.totp_setup_only:
            # The user is now fully authenticated: a new session id, the set-up one ends (ASVS 7.2.4).
            await self._store.revoke_session(session.id, account.id, "totp_setup_done")
            refreshed = await self._store.account(account.id)
            assert refreshed is not None
            new_token, digest = new_secret_token()
            await self._store.create_session(
                refreshed, digest, False, source_ip or session.source_ip, user_agent, self._clock.now()
            )
        return codes, new_token

    async def disable_totp(self, token: str, password: str, source_ip: str) -> Account:
        """Turn TOTP off after checking the password; refused while the organisation requires it."""
        session, account = await self.require_session(token)
        if not await self._password_in_session(session, account, password, "wrong_password", source_ip):
            raise PermissionDenied("the password is wrong")
        if account.require_totp:
            raise FailedPrecondition("your organisation requires two-step verification: it cannot be turned off")
        await self._store.disable_totp(account.id)
        await self._store.audit(
            account.organization_id, account.id, "totp.disabled", f"user:{account.id}", source_ip=source_ip
        )
        updated = await self._store.account(account.id)
        assert updated is not None
        return updated
