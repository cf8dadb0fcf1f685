-- Concurrency keys (schema 7): who a job runs for, so a queue shares its slots fairly
-- between keys (claim.sql).

ALTER TABLE kiln_jobs ADD COLUMN concurrency_key text;

-- Due jobs of each key in claim order, and (the same index) the distinct keys waiting.
CREATE INDEX kiln_jobs_claim_by_key
    ON kiln_jobs (queue, concurrency_key, priority DESC, (coalesce(run_at_ms, 0)), id)
    WHERE status = 0 AND concurrency_key IS NOT NULL;

-- Due jobs without a key in claim order: the claim index of schema 4, narrowed to them.
DROP INDEX kiln_jobs_claim;
CREATE INDEX kiln_jobs_claim ON kiln_jobs (queue, priority DESC, (coalesce(run_at_ms, 0)), id)
    WHERE status = 0 AND concurrency_key IS NULL;
