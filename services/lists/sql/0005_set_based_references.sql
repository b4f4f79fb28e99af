-- List memberships check their list and subscriber once per statement instead of once per row.
--
-- A foreign key runs one query per inserted row: for a 20,000-row import chunk that is 40,000 queries,
-- a fifth of the import's database time. The statement-level trigger below does the same work (each
-- referenced row locked FOR KEY SHARE, a missing one refused with SQLSTATE 23503) in one query, the one
-- that already reads each subscriber's status for the list counts. Deleting a subscriber or a list is
-- checked the other way round by statement triggers that refuse to leave memberships behind. As with a
-- foreign key, a delete waits for a transaction that locked the row and then sees its memberships, and
-- an insert after a committed delete finds the row gone; the delete side reads with a fresh snapshot,
-- which READ COMMITTED gives each statement, so other isolation levels are refused there.
ALTER TABLE list_subscriptions DROP CONSTRAINT list_subscriptions_list_id_fkey;
ALTER TABLE list_subscriptions DROP CONSTRAINT list_subscriptions_subscriber_id_fkey;

-- Rollback finds a job's rows through the job's list and by scanning the organisation's subscribers:
-- rare, while these two indexes cost every imported row an index insert each.
DROP INDEX list_subscriptions_import;
DROP INDEX subscribers_created_by_import;

CREATE OR REPLACE FUNCTION list_counts_subscribed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT a.list_id INTO missing
    FROM (SELECT DISTINCT list_id FROM added) a
    LEFT JOIN LATERAL (SELECT id FROM lists WHERE id = a.list_id FOR KEY SHARE) l ON true
    WHERE l.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'list % does not exist', missing
            USING ERRCODE = 'foreign_key_violation', TABLE = 'list_subscriptions', COLUMN = 'list_id';
    END IF;
    -- The lock waits for a concurrent status change and reads the committed status, so the counts
    -- added here agree with what that change counted.
    WITH checked AS MATERIALIZED (
        SELECT a.list_id, a.subscriber_id, s.status
        FROM added a
        LEFT JOIN LATERAL (SELECT status FROM subscribers WHERE id = a.subscriber_id FOR KEY SHARE) s ON true
    ), counted AS (
        INSERT INTO list_counts (list_id, active, total)
        SELECT list_id, count(*) FILTER (WHERE status = 'active'), count(*)
        FROM checked WHERE status IS NOT NULL
        GROUP BY list_id
    )
    SELECT subscriber_id INTO missing FROM checked WHERE status IS NULL LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'subscriber % does not exist', missing
            USING ERRCODE = 'foreign_key_violation', TABLE = 'list_subscriptions', COLUMN = 'subscriber_id';
    END IF;
    RETURN NULL;
END $$;

-- A membership is never moved to another list or subscriber: it is removed and added.
CREATE FUNCTION list_subscriptions_keys_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a list membership cannot change its list or subscriber; delete it and insert another'
        USING ERRCODE = 'foreign_key_violation', TABLE = 'list_subscriptions';
END $$;
CREATE TRIGGER list_subscriptions_keys_fixed BEFORE UPDATE OF list_id, subscriber_id ON list_subscriptions
    FOR EACH ROW WHEN (OLD.list_id IS DISTINCT FROM NEW.list_id OR OLD.subscriber_id IS DISTINCT FROM NEW.subscriber_id)
    EXECUTE FUNCTION list_subscriptions_keys_fixed();

CREATE FUNCTION subscribers_leave_no_memberships() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    kept bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'subscribers are deleted only under READ COMMITTED (the membership check needs a fresh snapshot)'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT r.id INTO kept FROM removed r WHERE EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.subscriber_id = r.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'subscriber % is still on a list', kept
            USING ERRCODE = 'foreign_key_violation', TABLE = 'list_subscriptions', COLUMN = 'subscriber_id';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER subscribers_leave_no_memberships AFTER DELETE ON subscribers
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION subscribers_leave_no_memberships();

CREATE FUNCTION lists_leave_no_memberships() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    kept bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'lists are deleted only under READ COMMITTED (the membership check needs a fresh snapshot)'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    SELECT r.id INTO kept FROM removed r WHERE EXISTS (SELECT 1 FROM list_subscriptions ls WHERE ls.list_id = r.id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'list % still has members', kept
            USING ERRCODE = 'foreign_key_violation', TABLE = 'list_subscriptions', COLUMN = 'list_id';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER lists_leave_no_memberships AFTER DELETE ON lists
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION lists_leave_no_memberships();
