-- Each organisation's sending domains (services/campaigns/domains.py): a campaign's From must be on one
-- it verified. A domain may be added by several organisations, but verified by one only.
CREATE TABLE sending_domains (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id   bigint      NOT NULL,
    domain            text        NOT NULL,
    return_path_host  text        NOT NULL,
    verified_at       timestamptz,
    -- The last live check (domains.Verification as JSON), shown on the domain's page.
    last_check        jsonb,
    checked_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, domain)
);
CREATE UNIQUE INDEX sending_domains_verified_once ON sending_domains (domain) WHERE verified_at IS NOT NULL;

-- The DKIM keys of a domain, private keys sealed (MAILBLAST_DKIM_SEALING_KEYS; services/common/sealing.py).
-- A generation is one RSA and one Ed25519 key; signing uses the newest generation that is active.
CREATE TABLE dkim_keys (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id           bigint      NOT NULL REFERENCES sending_domains ON DELETE CASCADE,
    generation          integer     NOT NULL,
    selector            text        NOT NULL,
    algorithm           text        NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    sealed_private_key  text        NOT NULL,
    public_record       text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, selector)
);

-- Every change of a domain's verification or keys, until announced on NATS
-- (mailblast.domain.changed.<organisation>.<domain>) for the senders' copies, as campaign_state_changes.
CREATE TABLE sending_domain_changes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint      NOT NULL,
    domain_id        bigint      NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION sending_domain_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_TABLE_NAME = 'dkim_keys' THEN
        INSERT INTO sending_domain_changes (organization_id, domain_id)
        SELECT organization_id, id FROM sending_domains
        WHERE id = (CASE WHEN TG_OP = 'DELETE' THEN OLD.domain_id ELSE NEW.domain_id END);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO sending_domain_changes (organization_id, domain_id) VALUES (OLD.organization_id, OLD.id);
    ELSE
        INSERT INTO sending_domain_changes (organization_id, domain_id) VALUES (NEW.organization_id, NEW.id);
    END IF;
    PERFORM pg_notify('mailblast_sending_domain_changes', '');
    RETURN NULL;
END $$;

CREATE TRIGGER sending_domain_added_or_deleted AFTER INSERT OR DELETE ON sending_domains
    FOR EACH ROW EXECUTE FUNCTION sending_domain_changed();
CREATE TRIGGER sending_domain_verified AFTER UPDATE OF verified_at ON sending_domains
    FOR EACH ROW WHEN ((OLD.verified_at IS NULL) <> (NEW.verified_at IS NULL))
    EXECUTE FUNCTION sending_domain_changed();
CREATE TRIGGER dkim_key_changed AFTER INSERT OR UPDATE OF sealed_private_key ON dkim_keys
    FOR EACH ROW EXECUTE FUNCTION sending_domain_changed();
