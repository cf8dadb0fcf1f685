-- Batches (schema 6): jobs submitted together with POST /v1/batches.

-- One row per batch. The record is the JSON of the batch (counts, progress, finished
-- time), kept by the writers in the same transaction as each change of one of its jobs.
-- A batch's log is kept in kiln_events under the batch's id (never in kiln_feed).
CREATE TABLE kiln_batches (
    id uuid PRIMARY KEY,          -- UUIDv7
    tenant text,
    record text NOT NULL
);

-- The batch a job was submitted in (NULL for jobs submitted alone).
ALTER TABLE kiln_jobs ADD COLUMN batch uuid;
CREATE INDEX kiln_jobs_by_batch ON kiln_jobs (batch, id) WHERE batch IS NOT NULL;
