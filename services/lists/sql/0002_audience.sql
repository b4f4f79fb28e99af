-- Audience: custom fields, more statuses, search indexes, import jobs, segments, suppression,
-- signup forms with consent, per-organisation settings.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE subscribers DROP CONSTRAINT subscribers_status_check;
ALTER TABLE subscribers ADD CONSTRAINT subscribers_status_check
    CHECK (status IN ('active', 'unsubscribed', 'error_stopped', 'complained', 'deleted', 'pending'));
-- The import job that created the row (rollback deletes those still marked) and the last one that wrote it.
ALTER TABLE subscribers ADD COLUMN created_by_import bigint;
ALTER TABLE subscribers ADD COLUMN import_job_id bigint;

-- Search at a million rows: keyset by id within the organisation, trigram for prefix/contains.
CREATE INDEX subscribers_organization_id ON subscribers (organization_id, id);
CREATE INDEX subscribers_organization_status ON subscribers (organization_id, status, id);
CREATE INDEX subscribers_email_trgm ON subscribers USING gin (lower(email) gin_trgm_ops);
CREATE INDEX subscribers_name_trgm ON subscribers USING gin (name gin_trgm_ops);
CREATE INDEX subscribers_created_by_import ON subscribers (created_by_import) WHERE created_by_import IS NOT NULL;

ALTER TABLE list_subscriptions ADD COLUMN import_job_id bigint;
CREATE INDEX list_subscriptions_import ON list_subscriptions (import_job_id) WHERE import_job_id IS NOT NULL;

CREATE TABLE custom_fields (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL,
    key              text NOT NULL,
    label            text NOT NULL,
    type             text NOT NULL CHECK (type IN ('text', 'number', 'date', 'choice')),
    options          jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, key)
);

CREATE TABLE import_jobs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id    bigint NOT NULL,
    list_id            bigint NOT NULL REFERENCES lists (id),
    mode               text NOT NULL CHECK (mode IN ('add_and_update', 'add_only', 'update_only')),
    state              text NOT NULL DEFAULT 'uploading'
                       CHECK (state IN ('uploading', 'queued', 'running', 'done', 'failed', 'rolled_back')),
    requested_encoding text NOT NULL DEFAULT '',
    encoding           text NOT NULL DEFAULT '',
    requested_delimiter text NOT NULL DEFAULT '',
    delimiter          text NOT NULL DEFAULT '',
    header             integer NOT NULL DEFAULT 0,
    has_header         boolean NOT NULL DEFAULT false,
    requested_mapping  jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Column position to target, fixed when the job first runs so a resumed job reads the same way.
    columns            jsonb,
    mapping            jsonb NOT NULL DEFAULT '{}'::jsonb,
    file_name          text NOT NULL DEFAULT '',
    total_bytes        bigint NOT NULL DEFAULT 0,
    uploaded_bytes     bigint NOT NULL DEFAULT 0,
    -- Committed progress: the byte offset and record number after the last committed chunk.
    bytes_done         bigint NOT NULL DEFAULT 0,
    rows_done          bigint NOT NULL DEFAULT 0,
    rows_added         bigint NOT NULL DEFAULT 0,
    rows_updated       bigint NOT NULL DEFAULT 0,
    rows_skipped       bigint NOT NULL DEFAULT 0,
    rows_failed        bigint NOT NULL DEFAULT 0,
    error              text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
CREATE INDEX import_jobs_organization ON import_jobs (organization_id, id);
CREATE INDEX import_jobs_pending ON import_jobs (id) WHERE state IN ('queued', 'running');

-- The uploaded file, in the chunks it came in: never held whole in memory.
CREATE TABLE import_chunks (
    job_id  bigint NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    "offset" bigint NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (job_id, "offset")
);

CREATE TABLE import_errors (
    job_id      bigint NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    row_number  bigint NOT NULL,
    reason      text NOT NULL,
    raw         text NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, row_number)
);

-- Values an import overwrote, the first time it touched each subscriber, so rollback can restore them.
CREATE TABLE import_changes (
    job_id               bigint NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    subscriber_id        bigint NOT NULL,
    previous_name        text NOT NULL,
    previous_attributes  jsonb NOT NULL,
    previous_import_job  bigint,
    PRIMARY KEY (job_id, subscriber_id)
);

CREATE TABLE segments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL,
    name             text NOT NULL,
    conditions       jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX segments_organization ON segments (organization_id, id);

-- Organisation-wide: an address here is never sent to. email is NULL for an erased subscriber,
-- whose address is kept only as an HMAC so a later import or signup can be refused.
CREATE TABLE suppressions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL,
    email            text,
    email_hash       text NOT NULL,
    reason           text NOT NULL CHECK (reason IN ('unsubscribed', 'hard_bounce', 'complaint', 'manual', 'import', 'erased')),
    source           text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, email_hash)
);
CREATE INDEX suppressions_organization_email ON suppressions (organization_id, email);

CREATE TABLE organization_settings (
    organization_id      bigint PRIMARY KEY,
    confirm_unsubscribe  boolean NOT NULL DEFAULT false,
    sender_address       text NOT NULL DEFAULT '',
    sender_name          text NOT NULL DEFAULT ''
);

CREATE TABLE signup_forms (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint NOT NULL,
    list_id          bigint NOT NULL REFERENCES lists (id),
    name             text NOT NULL,
    field_keys       jsonb NOT NULL DEFAULT '[]'::jsonb,
    ask_name         boolean NOT NULL DEFAULT true,
    redirect_url     text NOT NULL DEFAULT '',
    thanks_text      text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signup_forms_organization ON signup_forms (organization_id, id);

-- Proof of consent: which form, when, from where, and when the address owner confirmed.
CREATE TABLE consents (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber_id    bigint NOT NULL REFERENCES subscribers (id),
    form_id          bigint NOT NULL REFERENCES signup_forms (id),
    token_hash       text NOT NULL UNIQUE,
    source_ip        text NOT NULL DEFAULT '',
    user_agent       text NOT NULL DEFAULT '',
    submitted_at     timestamptz NOT NULL DEFAULT now(),
    confirmed_at     timestamptz
);
CREATE INDEX consents_subscriber ON consents (subscriber_id);

-- Signup attempts per source IP for the rate limit; old rows are pruned as new ones arrive.
CREATE TABLE signup_attempts (
    source_ip     text NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signup_attempts_ip ON signup_attempts (source_ip, attempted_at);
