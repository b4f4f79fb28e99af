-- Every bounce the service recorded, from returned DSNs and from the sender's own refused sessions.
CREATE TABLE bounces (
    bounce_id       text PRIMARY KEY,
    organization_id bigint NOT NULL,
    campaign_id     bigint NOT NULL,
    subscriber_id   bigint NOT NULL,
    email           text NOT NULL DEFAULT '',
    kind            text NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint')),
    source          text NOT NULL CHECK (source IN ('smtp', 'dsn')),
    status          text NOT NULL DEFAULT '',
    smtp_code       integer NOT NULL DEFAULT 0,
    diagnostic      text NOT NULL DEFAULT '',
    reason          text NOT NULL DEFAULT '',
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX bounces_campaign ON bounces (organization_id, campaign_id, received_at);
