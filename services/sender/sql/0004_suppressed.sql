-- A recipient found on the suppression list when the sender came to deliver it is never offered:
-- 'suppressed' is final like sent, rejected and expired.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('claimed', 'sent', 'deferred', 'rejected', 'expired', 'suppressed'));
ALTER TABLE transactional_deliveries DROP CONSTRAINT transactional_deliveries_status_check;
ALTER TABLE transactional_deliveries ADD CONSTRAINT transactional_deliveries_status_check
    CHECK (status IN ('sent', 'deferred', 'rejected', 'expired', 'suppressed'));
