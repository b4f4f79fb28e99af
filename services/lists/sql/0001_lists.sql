-- Mailing lists, the organisation's subscribers, and what happened to them.
CREATE TABLE lists (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lists_organization ON lists (organization_id, id);

-- A subscriber belongs to an organisation, not a list, so a bounce or complaint counts across all lists.
CREATE TABLE subscribers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id     bigint NOT NULL,
    email               text NOT NULL,
    name                text NOT NULL DEFAULT '',
    attributes          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'unsubscribed', 'error_stopped')),
    hard_bounce_count   integer NOT NULL DEFAULT 0,
    last_bounce_reason  text NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX subscribers_organization_email ON subscribers (organization_id, lower(email));

CREATE TABLE list_subscriptions (
    list_id        bigint NOT NULL REFERENCES lists (id),
    subscriber_id  bigint NOT NULL REFERENCES subscribers (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, subscriber_id)
);
-- Recipient streaming walks subscribers by id and probes their subscriptions.
CREATE INDEX list_subscriptions_subscriber ON list_subscriptions (subscriber_id, list_id);

-- Bounce events already applied: JetStream redelivers, and a hard bounce must count once.
CREATE TABLE processed_bounces (
    bounce_id     text PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriber_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id  bigint NOT NULL REFERENCES subscribers (id),
    old_status     text,
    new_status     text NOT NULL,
    cause          text NOT NULL,
    detail         text NOT NULL DEFAULT '',
    occurred_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriber_events_subscriber ON subscriber_events (subscriber_id, id);
