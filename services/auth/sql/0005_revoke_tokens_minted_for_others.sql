-- An API token is now only ever issued to its creator's own user. Tokens an admin issued to someone else
-- before (the way to become owner) stop working; their holders create their own.
UPDATE api_tokens t SET revoked_at = now()
FROM audit_events a
WHERE t.revoked_at IS NULL
  AND a.action = 'api_token.created'
  AND a.target = 'api_token:' || t.id
  AND a.user_id IS DISTINCT FROM t.user_id;
