-- Subscribers lists erased (mailblast.privacy.erased): their bounces stay (each id counts once) with the
-- keyed hash of the address instead of the address and without the server's diagnostic text, and every
-- later bounce of theirs reads this table first, so a late DSN cannot put the address back.
CREATE TABLE erased_subscribers (
    organization_id  bigint      NOT NULL,
    subscriber_id    bigint      NOT NULL,
    email_hash       text        NOT NULL,
    erased_at        timestamptz NOT NULL,
    PRIMARY KEY (organization_id, subscriber_id)
);

CREATE INDEX bounces_subscriber ON bounces (organization_id, subscriber_id);
