-- Double opt-in confirmation mails sent, by keyed address hash, so one address is not mailed again and
-- again by strangers submitting it: one per form within a window, a daily cap across the organisation.
-- Rows older than a day are pruned as new ones arrive for the same address.
CREATE TABLE confirmation_mails (
    organization_id  bigint NOT NULL,
    email_hash       text NOT NULL,
    form_id          bigint NOT NULL,
    sent_at          timestamptz NOT NULL
);
CREATE INDEX confirmation_mails_address ON confirmation_mails (organization_id, email_hash, sent_at);
