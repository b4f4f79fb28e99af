-- Scheduled sending (予約配信): a campaign waits in 'scheduled' until scheduled_at, then whichever
-- campaigns process sees it due first moves it to 'sending' in one UPDATE (the row is the claim: the
-- others find it no longer scheduled), so it starts exactly once, across restarts and replicas.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_state_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_state_check
    CHECK (state IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled'));
ALTER TABLE campaigns ADD COLUMN scheduled_at timestamptz;
ALTER TABLE campaigns ADD COLUMN schedule_time_zone text NOT NULL DEFAULT '';
ALTER TABLE campaigns ADD CONSTRAINT campaigns_scheduled_has_time
    CHECK (state <> 'scheduled' OR scheduled_at IS NOT NULL);
CREATE INDEX campaigns_due_idx ON campaigns (scheduled_at) WHERE state = 'scheduled';
