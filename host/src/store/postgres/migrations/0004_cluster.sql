-- Several Kiln nodes sharing this database (schema 4).

-- The next position of the feed. Every writer's transaction locks this row first, so
-- positions are handed out in commit order across nodes: a client resuming GET /v1/events
-- never skips an event that committed late. (It also orders the writers' row locks: no
-- two writers can deadlock.)
--
-- `queued` counts the cluster's queued jobs, kept by the same writers, so a submit on any
-- node checks `max_queued` against the whole cluster with one read of one row.
CREATE TABLE kiln_feed_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next bigint NOT NULL,
    queued bigint NOT NULL
);
INSERT INTO kiln_feed_head (next, queued)
    SELECT (SELECT coalesce(max(position), 0) + 1 FROM kiln_feed),
           (SELECT count(*) FROM kiln_jobs WHERE status = 0);

-- Copies of record fields the claim query sorts and filters by, and the node whose lease
-- a running job holds.
ALTER TABLE kiln_jobs
    ADD COLUMN queue text,
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN run_at_ms bigint,
    ADD COLUMN node uuid;
UPDATE kiln_jobs SET
    queue = record::jsonb ->> 'queue',
    priority = coalesce((record::jsonb ->> 'priority')::integer, 0),
    run_at_ms = (record::jsonb ->> 'run_at_ms')::bigint;
ALTER TABLE kiln_jobs ALTER COLUMN queue SET NOT NULL;
-- Due jobs in claim order: priority, then run_at, then age.
CREATE INDEX kiln_jobs_claim ON kiln_jobs (queue, priority DESC, (coalesce(run_at_ms, 0)), id)
    WHERE status = 0;
CREATE INDEX kiln_jobs_running ON kiln_jobs (queue, node) WHERE status = 1;

-- The leader's lease: the node that runs the cluster's once-only maintenance (expiry,
-- rescue of dead nodes' jobs) until `expires_ms`, renewed while it lives. Times are the
-- database's clock, so nodes' clocks need not agree.
CREATE TABLE kiln_leader (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    node uuid NOT NULL,
    expires_ms bigint NOT NULL
);
