-- Every change of a campaign's state, until it is announced on NATS (mailblast.campaign.state.*.*,
-- services/campaigns/announcements.py), so that the senders' copies follow pause, resume and cancel
-- without asking campaigns. Written by triggers, whatever statement changes the state, in the same
-- transaction; the id is the change's version: two changes of one campaign are serialised by its row,
-- so the later commit gets the greater id.
CREATE TABLE campaign_state_changes (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  bigint      NOT NULL,
    campaign_id      bigint      NOT NULL,
    state            text        NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION campaign_state_changed() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO campaign_state_changes (organization_id, campaign_id, state)
    VALUES (NEW.organization_id, NEW.id, NEW.state);
    PERFORM pg_notify('mailblast_campaign_state_changes', '');
    RETURN NULL;
END $$;

CREATE TRIGGER campaign_created AFTER INSERT ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaign_state_changed();
CREATE TRIGGER campaign_state_changed AFTER UPDATE OF state ON campaigns
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION campaign_state_changed();

-- The first start after this change announces the state of every campaign there is, so a campaign
-- paused or cancelled before it is one the senders know to hold back.
INSERT INTO campaign_state_changes (organization_id, campaign_id, state)
SELECT organization_id, id, state FROM campaigns ORDER BY id;
