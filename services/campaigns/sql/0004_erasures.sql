-- Subscribers lists erased (mailblast.privacy.erased): their recipient rows keep the keyed hash of the
-- address instead of the address (and their counts), and every later write of their rows reads this
-- table first, so a late delivery report cannot put the address back.
CREATE TABLE erased_subscribers (
    organization_id  bigint      NOT NULL,
    subscriber_id    bigint      NOT NULL,
    email_hash       text        NOT NULL,
    erased_at        timestamptz NOT NULL,
    PRIMARY KEY (organization_id, subscriber_id)
);

CREATE INDEX campaign_deliveries_subscriber ON campaign_deliveries (subscriber_id);
