"""Rules for organisations, users and token scopes, checked before anything is stored."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from services.common.errors import InvalidArgument
from services.common.identity import ROLES, SCOPES

# A token never grants more than its user's role allows.
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "owner": ("read", "send", "admin"),
    "admin": ("read", "send", "admin"),
    "editor": ("read", "send"),
    "viewer": ("read",),
}

MAX_LOGIN = 64
MAX_NAME = 200


# Unicode category Cc (C0, DEL, C1) plus the line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def check_text(field: str, value: str, max_length: int) -> str:
    """Return a one-line text field, or refuse it naming the field."""
    if not value.strip():
        raise InvalidArgument("%(field)s must not be empty", field=field)
    if len(value) > max_length:
        raise InvalidArgument("%(field)s is longer than %(limit)s characters", field=field, limit=max_length)
    if _has_control(value):
        raise InvalidArgument(
            "%(field)s %(value)r contains line breaks or control characters", field=field, value=value
        )
    return value


def check_login(login: str) -> str:
    """Return a valid login: non-empty, one line, at most 64 characters."""
    return check_text("login", login, MAX_LOGIN)


def check_email(email: str) -> str:
    """Return the normalised address, or refuse it saying why."""
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidArgument(
            "%(address)r is not an email address: %(reason)s", address=email, reason=str(exc)
        ) from None


def check_role(role: str) -> str:
    """Return a known role."""
    if role not in ROLES:
        raise InvalidArgument("role %(role)r is not one of %(allowed)s", role=role, allowed=", ".join(ROLES))
    return role


def check_scopes(scopes: list[str], role: str) -> tuple[str, ...]:
    """Return the requested scopes, de-duplicated, if each is known and allowed by the user's role."""
    if not scopes:
        raise InvalidArgument("give at least one scope of %(allowed)s", allowed=", ".join(SCOPES))
    for scope in scopes:
        if scope not in SCOPES:
            raise InvalidArgument("scope %(scope)r is not one of %(allowed)s", scope=scope, allowed=", ".join(SCOPES))
        if scope not in ROLE_SCOPES[role]:
            raise InvalidArgument(
                "scope %(scope)r is more than a user with role %(role)r may have", scope=scope, role=role
            )
    return tuple(dict.fromkeys(scopes))


def effective_scopes(token_scopes: list[str], role: str) -> tuple[str, ...]:
    """The scopes a token grants today: its own, bounded by its user's current role."""
    return tuple(s for s in token_scopes if s in ROLE_SCOPES.get(role, ()))
