-- Subscribers lists erased (mailblast.privacy.erased): their ledger rows keep the keyed hash of the address
-- instead of the address, and the server's free-text reply is dropped; every later write of their rows
-- reads this table first, so an in-flight delivery cannot put the address back.
CREATE TABLE erased_subscribers (
    organization_id  bigint      NOT NULL,
    subscriber_id    bigint      NOT NULL,
    email_hash       text        NOT NULL,
    erased_at        timestamptz NOT NULL,
    PRIMARY KEY (organization_id, subscriber_id)
);
CREATE INDEX erased_subscribers_hash ON erased_subscribers (organization_id, email_hash);

CREATE INDEX deliveries_org_subscriber ON deliveries (organization_id, subscriber_id);

-- Transactional rows name no subscriber: an erasure finds them by the keyed hash of their address
-- (rows written before this column are hashed by the first erasure in their organisation).
ALTER TABLE transactional_deliveries ADD COLUMN email_hash text;
CREATE INDEX transactional_deliveries_hash ON transactional_deliveries (organization_id, email_hash);
