-- Why a row was rejected, as the translatable template and values behind `reason` (English), so the
-- console can hand Japanese users the rejected-rows CSV in Japanese. NULL for rows from before.
ALTER TABLE import_errors ADD COLUMN explanation jsonb;
