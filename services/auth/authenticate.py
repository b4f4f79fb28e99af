"""Turning a presented API token into the principal it stands for."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta

from services.auth import accounts, tokens
from services.auth.store import AuthStore
from services.common.errors import Unauthenticated
from services.common.identity import Principal

# last_used_at is for people ("is this token still used?"); minute precision spares a write per call.
_TOUCH_EVERY = timedelta(minutes=1)


class TokenAuthenticator:
    """Resolves bearer tokens against the local store; auth's own server and Authenticate use it."""

    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def __call__(self, text: str) -> Principal:
        """Return the principal of a valid token; refuse malformed, unknown and revoked ones."""
        prefix, secret_hash = tokens.parse(text)
        holder = await self._store.find_token(secret_hash)
        if holder is None or not hmac.compare_digest(holder.prefix, prefix):
            raise Unauthenticated("unknown API token mb_%(prefix)s_…: check it was copied whole", prefix=prefix)
        if holder.revoked_at is not None:
            raise Unauthenticated(
                "API token mb_%(prefix)s_… has been revoked; ask an admin for a new one", prefix=prefix
            )
        if holder.user_disabled:
            raise Unauthenticated("API token mb_%(prefix)s_… belongs to a disabled user; ask an admin", prefix=prefix)
        if holder.last_used_at is None or datetime.now(UTC) - holder.last_used_at >= _TOUCH_EVERY:
            await self._store.touch_token(holder.token_id)
        return Principal(
            organization_id=holder.organization_id,
            user_id=holder.user_id,
            scopes=accounts.effective_scopes(holder.scopes, holder.role),
            role=holder.role,
            token_id=holder.token_id,
        )
