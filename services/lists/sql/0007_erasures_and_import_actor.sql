-- Erasures lists did, with the keyed hash of the address only: written in the erasure's transaction and
-- announced on mailblast.privacy.erased once committed (again after a restart until NATS took it), so
-- every other service that holds the address hears of it even when NATS was away at that moment.
CREATE TABLE erasures (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint      NOT NULL,
    subscriber_id    bigint      NOT NULL,
    email_hash       text        NOT NULL,
    erased_at        timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz
);
CREATE INDEX erasures_unpublished ON erasures (id) WHERE published_at IS NULL;

-- Who started an import (user, API token, address), for the audit log's line when it ends in the background.
ALTER TABLE import_jobs ADD COLUMN started_by_user bigint NOT NULL DEFAULT 0;
ALTER TABLE import_jobs ADD COLUMN started_by_token bigint NOT NULL DEFAULT 0;
ALTER TABLE import_jobs ADD COLUMN started_from text NOT NULL DEFAULT '';
