-- Recipients the sender found suppressed at send time: never offered, final like sent, bounced and failed.
ALTER TABLE campaigns ADD COLUMN suppressed bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign_deliveries DROP CONSTRAINT campaign_deliveries_status_check;
ALTER TABLE campaign_deliveries ADD CONSTRAINT campaign_deliveries_status_check
    CHECK (status IN ('deferred', 'sent', 'bounced', 'failed', 'suppressed'));
