-- The sender's own copies of what other services decide and every delivery must respect, kept current
-- from NATS (mailblast.campaign.state.*.* and mailblast.suppression.changed.*.*, streams that keep the
-- last change of each campaign and address) by durables all sender processes share. A send reads them
-- in the same statement that claims its recipients, and never asks campaigns or lists.
-- `version` grows with every change of one campaign or address: a change older than the row is ignored,
-- so changes may be applied in any order, more than once, by any sender process.
CREATE TABLE campaign_states_copy (
    organization_id  bigint      NOT NULL,
    campaign_id      bigint      NOT NULL,
    state            text        NOT NULL,
    version          bigint      NOT NULL,
    changed_at       timestamptz,
    PRIMARY KEY (organization_id, campaign_id)
);

-- The keyed hash of the address (services/common/privacy.py), never the address. reason NULL: taken off
-- the list (kept, so that an older change arriving late cannot put the address back on).
CREATE TABLE suppressions_copy (
    organization_id  bigint      NOT NULL,
    email_hash       text        NOT NULL,
    reason           text,
    version          bigint      NOT NULL,
    changed_at       timestamptz,
    PRIMARY KEY (organization_id, email_hash)
);
