-- Failed logins counted per login and client (OWASP's device cookies): client '' stands for every browser
-- without a valid device cookie for that login ("unknown clients"), 'device:<nonce>' for one device cookie,
-- 'session:<id>' for the password checks made within one session. The login need not exist: an unknown
-- login locks like a real one, so the answers tell nothing about which logins exist.
CREATE TABLE login_lockouts (
    login            text NOT NULL,
    client           text NOT NULL,
    failures         integer NOT NULL,
    last_failure_at  timestamptz NOT NULL,
    locked_until     timestamptz,
    PRIMARY KEY (login, client)
);
CREATE INDEX login_lockouts_stale ON login_lockouts (last_failure_at);

INSERT INTO login_lockouts (login, client, failures, last_failure_at, locked_until)
SELECT login, '', failed_logins, now(), locked_until FROM users WHERE failed_logins > 0 OR locked_until > now();

ALTER TABLE users DROP COLUMN failed_logins, DROP COLUMN locked_until;
