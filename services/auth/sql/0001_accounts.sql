-- Organisations, their users and the API tokens users call mailblast with.
CREATE TABLE organizations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    login            text NOT NULL UNIQUE,
    email            text NOT NULL,
    role             text NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_organization ON users (organization_id, id);

-- Only the SHA-256 of a token's secret is kept: the secret is 32 random bytes, so a slow hash buys nothing.
CREATE TABLE api_tokens (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    name             text NOT NULL,
    scopes           text[] NOT NULL,
    prefix           text NOT NULL,
    secret_hash      bytea NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_used_at     timestamptz,
    revoked_at       timestamptz
);
CREATE INDEX api_tokens_organization ON api_tokens (organization_id, id);
