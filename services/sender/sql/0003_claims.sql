-- A sender claims recipients just before delivering them, for a limited time, so that a copy of the
-- same batch redelivered to another sender (its ack deadline passed while the first was still busy)
-- never sends them a second time. A killed sender's claims lapse and another sender takes over.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('claimed', 'sent', 'deferred', 'rejected', 'expired'));
ALTER TABLE deliveries ADD COLUMN claim_owner text;
ALTER TABLE deliveries ADD COLUMN claim_expires timestamptz;
