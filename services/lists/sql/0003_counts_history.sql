-- List head counts kept by the transactions that change membership or status, and the history of
-- imported subscribers recorded once per job instead of once per row.

-- Count changes per list, insert-only so concurrent writers never wait on one hot row; a list's
-- counts are the sums of its rows, folded together now and then (see ListsStore.lists).
CREATE TABLE list_counts (
    list_id  bigint NOT NULL,
    active   bigint NOT NULL,
    total    bigint NOT NULL
);
CREATE INDEX list_counts_list ON list_counts (list_id);

INSERT INTO list_counts (list_id, active, total)
SELECT ls.list_id, count(*) FILTER (WHERE s.status = 'active'), count(*)
FROM list_subscriptions ls JOIN subscribers s ON s.id = ls.subscriber_id
GROUP BY ls.list_id;

-- (Functions keep the schema they were created in: other callers may run with another search_path.)
-- Statement-level triggers: one aggregate per statement, so a 20,000-row import chunk costs one
-- insert here, not 20,000. Rows are looked up by index one by one (LATERAL ... OFFSET 0): a transition
-- table has no statistics, and hashing all subscribers for a few changed rows would grow with the table. Every path that changes a status locks the subscriber FOR UPDATE first,
-- which waits for the FOR KEY SHARE lock a concurrent subscription's foreign key check holds (and
-- the other way round), so the status each side counts with is the committed one.
CREATE FUNCTION list_counts_subscribed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO list_counts (list_id, active, total)
    SELECT a.list_id, count(*) FILTER (WHERE s.status = 'active'), count(*)
    FROM added a JOIN LATERAL (SELECT status FROM subscribers WHERE id = a.subscriber_id OFFSET 0) s ON true
    GROUP BY a.list_id;
    RETURN NULL;
END $$;

-- A removed subscription is counted with the subscriber's status locked, so a concurrent status
-- change is either seen by it or sees the subscription gone.
CREATE FUNCTION list_counts_unsubscribed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO list_counts (list_id, active, total)
    SELECT r.list_id, -count(*) FILTER (WHERE s.status = 'active'), -count(*)
    FROM removed r JOIN LATERAL (
        SELECT status FROM subscribers WHERE id = r.subscriber_id FOR SHARE
    ) s ON true
    GROUP BY r.list_id;
    RETURN NULL;
END $$;

CREATE FUNCTION list_counts_status() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO list_counts (list_id, active, total)
    SELECT ls.list_id,
           sum(CASE WHEN n.status = 'active' THEN 1 ELSE 0 END - CASE WHEN o.status = 'active' THEN 1 ELSE 0 END),
           0
    FROM before_rows o JOIN after_rows n ON n.id = o.id
    JOIN LATERAL (SELECT list_id FROM list_subscriptions WHERE subscriber_id = n.id OFFSET 0) ls ON true
    WHERE (o.status = 'active') <> (n.status = 'active')
    GROUP BY ls.list_id;
    RETURN NULL;
END $$;

CREATE TRIGGER list_subscriptions_counted_insert AFTER INSERT ON list_subscriptions
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION list_counts_subscribed();
CREATE TRIGGER list_subscriptions_counted_delete AFTER DELETE ON list_subscriptions
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION list_counts_unsubscribed();
CREATE TRIGGER subscribers_counted_status AFTER UPDATE ON subscribers
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_status();

-- A subscriber's history: its recorded changes, and for one an import created, the job's 'import'
-- event at the time its chunk committed (the row's created_at). An import of a million rows then
-- writes no million history rows; rollback and erasure take the derived event with the subscriber.
CREATE VIEW subscriber_history AS
SELECT e.subscriber_id, e.old_status, e.new_status, e.cause, e.detail, e.occurred_at, e.id AS seq
FROM subscriber_events e
UNION ALL
SELECT s.id, NULL, 'active', 'import', 'import ' || s.created_by_import, s.created_at, 0
FROM subscribers s WHERE s.created_by_import IS NOT NULL;

-- Imports before this migration wrote that event as a row as well: keep one.
DELETE FROM subscriber_events e USING subscribers s
WHERE e.subscriber_id = s.id AND e.cause = 'import' AND e.detail = 'import ' || s.created_by_import;
