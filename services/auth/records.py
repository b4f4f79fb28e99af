"""Auth's records: organisations, users, sessions, tokens and audit events as the store returns them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Organization:
    """A customer of this mailblast installation."""

    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class User:
    """A person (or tool) of one organisation."""

    id: int
    organization_id: int
    login: str
    email: str
    role: str
    created_at: datetime
    has_password: bool = False
    totp_enabled: bool = False
    locked_until: datetime | None = None
    disabled_at: datetime | None = None


@dataclass(frozen=True)
class Account:
    """A user with what logging in needs."""

    id: int
    organization_id: int
    login: str
    email: str
    role: str
    created_at: datetime
    has_password: bool
    totp_enabled: bool
    locked_until: datetime | None
    disabled_at: datetime | None
    password_hash: str | None
    totp_secret: str | None
    totp_pending_secret: str | None
    totp_last_step: int
    require_totp: bool
    organization_name: str

    def user(self) -> User:
        """The public part."""
        return User(
            self.id, self.organization_id, self.login, self.email, self.role, self.created_at,
            self.has_password, self.totp_enabled, self.locked_until, self.disabled_at,
        )  # fmt: skip


@dataclass(frozen=True)
class SessionRow:
    """A session found by its token, with its user's current role and state; `now` is the service's clock then."""

    id: int
    organization_id: int
    user_id: int
    totp_setup_only: bool
    created_at: datetime
    last_seen_at: datetime
    revoked_at: datetime | None
    source_ip: str
    user_agent: str
    now: datetime


@dataclass(frozen=True)
class Strikes:
    """Failed logins of one login from one client; the try just counted locked it when `locked_now`."""

    failures: int
    locked_until: datetime | None
    locked_now: bool


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log."""

    id: int
    organization_id: int | None
    at: datetime
    user_id: int | None
    service: str
    source_ip: str
    action: str
    target: str
    detail: dict
    api_token_id: int | None = None


@dataclass(frozen=True)
class ApiToken:
    """What is known about a token; never its secret."""

    id: int
    organization_id: int
    user_id: int
    name: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class TokenHolder:
    """A token found by its secret, with the user it belongs to."""

    token_id: int
    prefix: str
    organization_id: int
    user_id: int
    scopes: list[str]
    role: str
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_disabled: bool = False


# Bootstrap runs once per installation; the lock makes two racing bootstraps see each other.
