-- Kiln's schema, version 1. Never edited once released: later changes are new files.
-- JSON is kept as text, exactly as Kiln wrote it (cast to jsonb to query it).

-- One row per job. The record is the JSON of the job (without payload and result); the
-- columns beside it are copies for the indexes.
CREATE TABLE kiln_jobs (
    id uuid PRIMARY KEY,          -- UUIDv7: ordered by creation
    status smallint NOT NULL,     -- 0 queued, 1 running, 2 completed, 3 failed, 4 cancelled
    job_type text NOT NULL,
    tenant text,
    finished_ms bigint,           -- ms since the epoch, when the job reached its end
    record text NOT NULL
);
CREATE INDEX kiln_jobs_by_status ON kiln_jobs (status, id);
CREATE INDEX kiln_jobs_by_type ON kiln_jobs (job_type, id);
CREATE INDEX kiln_jobs_by_tenant ON kiln_jobs (tenant, id) WHERE tenant IS NOT NULL;
CREATE INDEX kiln_jobs_by_finish ON kiln_jobs (finished_ms, id) WHERE finished_ms IS NOT NULL;

CREATE TABLE kiln_payloads (
    job_id uuid PRIMARY KEY,
    payload text NOT NULL
);

CREATE TABLE kiln_results (
    job_id uuid PRIMARY KEY,
    result text NOT NULL
);

-- Each job's append-only event log; seq runs 1, 2, 3, ... without gaps per job.
CREATE TABLE kiln_events (
    job_id uuid NOT NULL,
    seq bigint NOT NULL,
    name text NOT NULL,
    data text NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Every job's events in commit order, for GET /v1/events; the oldest are trimmed to the
-- configured retention. The events themselves stay in kiln_events.
CREATE TABLE kiln_feed (
    position bigint PRIMARY KEY,
    job_id uuid NOT NULL,
    seq bigint NOT NULL,
    status smallint NOT NULL      -- the job's status after the event
);

-- Idempotency-Key slots of live jobs: the tenant, a NUL byte, the key (bytea, as text
-- cannot hold the NUL).
CREATE TABLE kiln_idempotency (
    key bytea PRIMARY KEY,
    job_id uuid NOT NULL
);
CREATE INDEX kiln_idempotency_by_job ON kiln_idempotency (job_id);

-- Each job's journaled LLM calls (JSON), replayed instead of paid again.
CREATE TABLE kiln_journal (
    job_id uuid NOT NULL,
    idx bigint NOT NULL,
    entry bytea NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- Uploads' records; the bytes are in the data dir.
CREATE TABLE kiln_files (
    id uuid PRIMARY KEY,
    expires_ms bigint NOT NULL,
    record text NOT NULL
);
CREATE INDEX kiln_files_by_expiry ON kiln_files (expires_ms, id);
