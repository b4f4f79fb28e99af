-- The API token an audited action was done with (NULL for console sessions and auth's own events).
ALTER TABLE audit_events ADD COLUMN api_token_id bigint;
