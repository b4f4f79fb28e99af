-- The transactional ledger: one row per (organisation, message key), final once sent, rejected or
-- expired, so a redelivered or re-published message is delivered once.
CREATE TABLE transactional_deliveries (
    organization_id  bigint      NOT NULL,
    message_key      text        NOT NULL,
    category         text        NOT NULL DEFAULT '',
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
    PRIMARY KEY (organization_id, message_key)
);
