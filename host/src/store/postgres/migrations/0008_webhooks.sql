-- Webhooks (schema 8): the outbox of job ends still to be delivered. The delivery itself
-- is kept in the job's record; this column is its due time, NULL once delivered or
-- given up.

ALTER TABLE kiln_jobs ADD COLUMN webhook_due_ms int8;
CREATE INDEX kiln_jobs_webhooks_due ON kiln_jobs (webhook_due_ms, id)
    WHERE webhook_due_ms IS NOT NULL;
