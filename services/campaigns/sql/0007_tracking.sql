-- Open and click measurement (効果測定): each campaign's switch, the organisation's switch, and per
-- recipient and link the first and last time and how often, with the counters kept in step on the campaign.
ALTER TABLE campaigns ADD COLUMN tracking boolean NOT NULL DEFAULT false;
ALTER TABLE campaigns ADD COLUMN opens_unique bigint NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN opens_total bigint NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicks_unique bigint NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicks_total bigint NOT NULL DEFAULT 0;

CREATE TABLE organization_tracking (
    organization_id   bigint PRIMARY KEY,
    tracking_enabled  boolean NOT NULL
);

-- link 0 is the open pixel; a click's row keeps the URL its signed token named.
CREATE TABLE tracking_events (
    campaign_id    bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    subscriber_id  bigint      NOT NULL,
    link           integer     NOT NULL,
    url            text        NOT NULL DEFAULT '',
    count          bigint      NOT NULL DEFAULT 1,
    machine_count  bigint      NOT NULL DEFAULT 0,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, subscriber_id, link)
);
CREATE INDEX tracking_events_links ON tracking_events (campaign_id, link) WHERE link > 0;
