-- The jobs one queue starts now, in the order of the in-memory queues (jobs/queues.rs):
-- higher priority first; within a priority, the key with the fewest running jobs (its
-- running jobs plus its jobs chosen before, the "turn"), then the oldest due. Jobs
-- without a key form one group, which max_per_key does not limit.
--
-- $1 queue, $2 its max_concurrent, $3 now (ms), $4 most jobs to take, $5 max_per_key
-- (NULL: none).
--
-- Writers are serialised by the feed head, so the running counts are exact. Cost: one
-- index probe per distinct key with queued jobs, plus the jobs taken.
WITH RECURSIVE keys (key) AS (
    SELECT min(concurrency_key) FROM kiln_jobs
     WHERE status = 0 AND queue = $1 AND concurrency_key IS NOT NULL
  UNION ALL
    SELECT (SELECT min(j.concurrency_key) FROM kiln_jobs j
             WHERE j.status = 0 AND j.queue = $1 AND j.concurrency_key > keys.key)
      FROM keys WHERE keys.key IS NOT NULL
),
running AS (
    SELECT concurrency_key AS key, count(*) AS n FROM kiln_jobs
     WHERE status = 1 AND queue = $1 GROUP BY concurrency_key
),
free AS (
    SELECT greatest(least($2::int8 - coalesce((SELECT sum(n) FROM running), 0), $4::int8), 0)
           AS slots
),
candidates AS (
    SELECT c.id, c.priority, c.due,
           coalesce(r.n, 0) + row_number() OVER (PARTITION BY k.key
               ORDER BY c.priority DESC, c.due, c.id) AS turn
      FROM keys k
      LEFT JOIN running r ON r.key = k.key
      CROSS JOIN free f
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, coalesce(j.run_at_ms, 0) AS due
          FROM kiln_jobs j
         WHERE j.status = 0 AND j.queue = $1 AND j.concurrency_key = k.key
           AND coalesce(j.run_at_ms, 0) <= $3::int8
         ORDER BY j.priority DESC, coalesce(j.run_at_ms, 0), j.id
         LIMIT greatest(least(f.slots, coalesce($5::int8, f.slots) - coalesce(r.n, 0)), 0)
      ) c
     WHERE k.key IS NOT NULL
  UNION ALL
    SELECT c.id, c.priority, c.due,
           coalesce((SELECT n FROM running WHERE key IS NULL), 0)
               + row_number() OVER (ORDER BY c.priority DESC, c.due, c.id) AS turn
      FROM free f
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, coalesce(j.run_at_ms, 0) AS due
          FROM kiln_jobs j
         WHERE j.status = 0 AND j.queue = $1 AND j.concurrency_key IS NULL
           AND coalesce(j.run_at_ms, 0) <= $3::int8
         ORDER BY j.priority DESC, coalesce(j.run_at_ms, 0), j.id
         LIMIT f.slots
      ) c
),
chosen AS (
    SELECT id FROM candidates
     ORDER BY priority DESC, turn, due, id
     LIMIT (SELECT slots FROM free)
)
SELECT j.id, j.record FROM kiln_jobs j
 WHERE j.id IN (SELECT id FROM chosen) AND j.status = 0
   FOR UPDATE OF j SKIP LOCKED
