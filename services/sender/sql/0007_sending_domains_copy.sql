-- The sender's copy of every organisation's sending domains (mailblast.domain.changed.*.*, a stream that
-- keeps each domain's last change), fed by the durable sender-sending-domains all sender processes share.
-- A message From a verified domain is signed with its keys (d= that domain) and sent with an envelope
-- sender under return_path_domain; the send path never asks campaigns. `keys` holds each key's selector,
-- algorithm and private key sealed with MAILBLAST_DKIM_SEALING_KEYS, as the event carried it.
CREATE TABLE sending_domains_copy (
    organization_id     bigint      NOT NULL,
    domain_id           bigint      NOT NULL,
    domain              text        NOT NULL,
    verified            boolean     NOT NULL,
    return_path_domain  text        NOT NULL,
    keys                jsonb       NOT NULL,
    version             bigint      NOT NULL,
    changed_at          timestamptz,
    PRIMARY KEY (organization_id, domain_id)
);
CREATE INDEX sending_domains_copy_verified ON sending_domains_copy (domain) WHERE verified;
