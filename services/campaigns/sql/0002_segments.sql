-- Campaigns may target saved segments as well as lists.
ALTER TABLE campaigns ADD COLUMN segment_ids bigint[] NOT NULL DEFAULT '{}';
