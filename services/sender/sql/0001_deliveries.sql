-- The delivery ledger: one row per campaign recipient, final once sent, rejected or expired.
CREATE TABLE deliveries (
    campaign_id      bigint      NOT NULL,
    subscriber_id    bigint      NOT NULL,
    organization_id  bigint      NOT NULL,
    email            text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('sent', 'deferred', 'rejected', 'expired')),
    message_id       text        NOT NULL DEFAULT '',
    smtp_code        integer     NOT NULL DEFAULT 0,
    smtp_message     text        NOT NULL DEFAULT '',
    enhanced_status  text        NOT NULL DEFAULT '',
    tls              boolean     NOT NULL DEFAULT false,
    attempts         integer     NOT NULL DEFAULT 0,
    first_attempt_at timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, subscriber_id)
);

CREATE INDEX deliveries_org_campaign ON deliveries (organization_id, campaign_id);
