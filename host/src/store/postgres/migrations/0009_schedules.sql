-- Schedules (`[schedules.NAME]` and `POST /v1/schedules`): each row a schedule's record
-- (JSON: cron, timezone, job type, payload, the latest tick handled). `id` is new with each
-- definition; a node records a tick only if the definition it read is still the stored
-- one, so a deleted or redefined schedule is never written back.
CREATE TABLE kiln_schedules (
    name text PRIMARY KEY,
    id uuid NOT NULL,
    record text NOT NULL
);
