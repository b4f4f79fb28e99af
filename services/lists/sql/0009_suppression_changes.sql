-- Every change of the suppression lists, until it is announced on NATS (mailblast.suppression.changed.*.*,
-- services/lists/announcements.py), so that the senders' copies follow the lists without asking lists.
-- Written by triggers, whatever statement changes the list, in the same transaction; the id is the
-- change's version: two changes of one address are serialised by its row, so the later commit gets the
-- greater id. reason NULL: the address was taken off the list.
CREATE TABLE suppression_changes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint      NOT NULL,
    email_hash       text        NOT NULL,
    reason           text,
    changed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION suppressions_added() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO suppression_changes (organization_id, email_hash, reason)
    SELECT organization_id, email_hash, reason FROM added_rows ORDER BY id;
    PERFORM pg_notify('mailblast_suppression_changes', '');
    RETURN NULL;
END $$;

CREATE FUNCTION suppressions_removed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO suppression_changes (organization_id, email_hash, reason)
    SELECT organization_id, email_hash, NULL FROM removed_rows ORDER BY id;
    PERFORM pg_notify('mailblast_suppression_changes', '');
    RETURN NULL;
END $$;

-- An update is a removal of the old row and an addition of the new one (in that order).
CREATE FUNCTION suppressions_updated() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO suppression_changes (organization_id, email_hash, reason)
    SELECT o.organization_id, o.email_hash, NULL FROM removed_rows o
    WHERE NOT EXISTS (
        SELECT 1 FROM added_rows n WHERE n.organization_id = o.organization_id AND n.email_hash = o.email_hash
    )
    ORDER BY o.id;
    INSERT INTO suppression_changes (organization_id, email_hash, reason)
    SELECT organization_id, email_hash, reason FROM added_rows ORDER BY id;
    PERFORM pg_notify('mailblast_suppression_changes', '');
    RETURN NULL;
END $$;

CREATE TRIGGER suppressions_added AFTER INSERT ON suppressions
    REFERENCING NEW TABLE AS added_rows FOR EACH STATEMENT EXECUTE FUNCTION suppressions_added();
CREATE TRIGGER suppressions_removed AFTER DELETE ON suppressions
    REFERENCING OLD TABLE AS removed_rows FOR EACH STATEMENT EXECUTE FUNCTION suppressions_removed();
CREATE TRIGGER suppressions_updated AFTER UPDATE ON suppressions
    REFERENCING OLD TABLE AS removed_rows NEW TABLE AS added_rows
    FOR EACH STATEMENT EXECUTE FUNCTION suppressions_updated();

-- The first start after this change announces every suppression there is, so the senders' copies start
-- complete (a sender that never heard of them would otherwise send to those addresses).
INSERT INTO suppression_changes (organization_id, email_hash, reason)
SELECT organization_id, email_hash, reason FROM suppressions ORDER BY id;
