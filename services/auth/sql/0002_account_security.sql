-- Passwords, lockout, TOTP, server-side sessions, single-use links, recovery codes and the audit log.
ALTER TABLE organizations ADD COLUMN require_totp boolean NOT NULL DEFAULT false;

ALTER TABLE users
    ADD COLUMN password_hash        text,
    ADD COLUMN failed_logins        integer NOT NULL DEFAULT 0,
    ADD COLUMN locked_until         timestamptz,
    ADD COLUMN disabled_at          timestamptz,
    ADD COLUMN totp_secret          text,
    ADD COLUMN totp_pending_secret  text,
    ADD COLUMN totp_enabled_at      timestamptz,
    -- The last TOTP time step accepted: a code of that step or an earlier one is a replay.
    ADD COLUMN totp_last_step       bigint NOT NULL DEFAULT 0;

-- Only the SHA-256 of a session token is kept (32 random bytes: a slow hash buys nothing).
CREATE TABLE sessions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash       bytea NOT NULL UNIQUE,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    -- A session that may only set up TOTP (the organisation requires it and the user has none).
    totp_setup_only  boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    revoked_reason   text,
    source_ip        text NOT NULL DEFAULT '',
    user_agent       text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions (user_id, id) WHERE revoked_at IS NULL;

-- Single-use secrets mailed or handed to a user: password reset and invitation links, login challenges.
CREATE TABLE user_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES users (id),
    kind        text NOT NULL CHECK (kind IN ('reset', 'invite', 'login_challenge')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX user_tokens_user ON user_tokens (user_id, kind) WHERE used_at IS NULL;

-- TOTP recovery codes carry 112 random bits, so their SHA-256 is enough.
CREATE TABLE recovery_codes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    UNIQUE (user_id, code_hash)
);

-- organization_id is null for failures of unknown logins: they belong to no organisation, but still
-- count against the source address.
CREATE TABLE audit_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint REFERENCES organizations (id),
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    user_id          bigint,
    service          text NOT NULL DEFAULT '',
    source_ip        text NOT NULL DEFAULT '',
    action           text NOT NULL,
    target           text NOT NULL DEFAULT '',
    detail           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_organization ON audit_events (organization_id, id);
CREATE INDEX audit_events_failures_by_ip ON audit_events (source_ip, at) WHERE action = 'login.failed';
