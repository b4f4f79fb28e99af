-- Committed progress of each writer stream of an import job. A job's rows are split between streams by
-- address, each stream written on its own connection and committed on its own, so each keeps its own
-- byte offset and row number for an exact resume; import_jobs.bytes_done / rows_done trail the slowest.
CREATE TABLE import_streams (
    job_id      bigint NOT NULL REFERENCES import_jobs (id) ON DELETE CASCADE,
    stream      integer NOT NULL,
    bytes_done  bigint NOT NULL,
    rows_done   bigint NOT NULL,
    PRIMARY KEY (job_id, stream)
);
