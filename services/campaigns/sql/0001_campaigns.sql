CREATE TABLE campaigns (
    id                  bigserial PRIMARY KEY,
    organization_id     bigint      NOT NULL,
    name                text        NOT NULL,
    state               text        NOT NULL DEFAULT 'draft'
                        CHECK (state IN ('draft', 'sending', 'paused', 'sent', 'cancelled')),
    list_ids            bigint[]    NOT NULL,
    from_name           text        NOT NULL DEFAULT '',
    from_address        text        NOT NULL,
    reply_to            text        NOT NULL DEFAULT '',
    subject             text        NOT NULL,
    html_body           text        NOT NULL DEFAULT '',
    text_body           text        NOT NULL DEFAULT '',
    -- fan-out progress: a restarted fan-out resumes after last_subscriber_id with the next batch number
    total               bigint      NOT NULL DEFAULT 0,
    published_batches   integer     NOT NULL DEFAULT 0,
    last_subscriber_id  bigint      NOT NULL DEFAULT 0,
    fanout_complete     boolean     NOT NULL DEFAULT false,
    -- counters kept in step with campaign_deliveries, so reading them costs nothing
    sent                bigint      NOT NULL DEFAULT 0,
    deferred            bigint      NOT NULL DEFAULT 0,
    bounced             bigint      NOT NULL DEFAULT 0,
    failed              bigint      NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);

CREATE INDEX campaigns_org_idx ON campaigns (organization_id, id DESC);
CREATE INDEX campaigns_sending_idx ON campaigns (state) WHERE state = 'sending';

-- The latest known state of each recipient of each campaign.
CREATE TABLE campaign_deliveries (
    campaign_id    bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    subscriber_id  bigint      NOT NULL,
    email          text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('deferred', 'sent', 'bounced', 'failed')),
    smtp_code      integer     NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, subscriber_id)
);

CREATE TABLE processed_bounces (
    bounce_id    text PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now()
);
