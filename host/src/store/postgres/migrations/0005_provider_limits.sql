-- Provider limits shared by every node of a cluster (schema 5): a provider's
-- `max_concurrent`, `requests_per_minute` and `tokens_per_minute` hold for all nodes
-- together, and a 429's Retry-After seen by one node pauses the provider on all of them.

-- One row per request sent in the last minute (and half a second), and per request still in flight however
-- old: `done` once answered, with the tokens it was paid for (its reservation until then).
-- The in-flight rows of a node without a recent heartbeat count no more (it died).
CREATE TABLE kiln_provider_calls (
    id bigserial PRIMARY KEY,
    provider text NOT NULL,
    node uuid NOT NULL,
    started_ms bigint NOT NULL,
    tokens bigint NOT NULL,
    done boolean NOT NULL DEFAULT false
);
CREATE INDEX kiln_provider_calls_by_provider ON kiln_provider_calls (provider, started_ms);

-- No node sends a request to `provider` before `until_ms` (the database's clock).
CREATE TABLE kiln_provider_pauses (
    provider text PRIMARY KEY,
    until_ms bigint NOT NULL
);

-- Admits one request of `p_tokens` (its reservation) to `p_provider` for node `p_node`,
-- or says how long to wait: `call` is the admitted request's row, or NULL with `wait_ms`
-- the time until a per-minute window or a pause allows it (0: wait for a request in
-- flight to end). Limits of NULL are unlimited. Callers for one provider are serialised
-- by an advisory lock held to the end of the statement's transaction, so the counts are
-- exact across nodes.
CREATE FUNCTION kiln_provider_admit(
    p_provider text, p_node uuid, p_max_concurrent bigint, p_rpm bigint, p_tpm bigint,
    p_tokens bigint, p_alive_ms bigint, OUT call bigint, OUT wait_ms bigint
) LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    -- A minute and half a second: a request reaches the provider a little after it is
    -- admitted, and not always equally late, so the provider's own count of any minute
    -- stays within the limit.
    window_ms constant bigint := 60500;
    window_start bigint := now_ms - window_ms;
    paused_until bigint;
    in_flight bigint;
    requests bigint;
    used bigint;
    oldest bigint;
    reserve bigint := p_tokens;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('kiln_provider_admit'), hashtext(p_provider));
    call := NULL;
    SELECT until_ms INTO paused_until FROM kiln_provider_pauses WHERE provider = p_provider;
    IF paused_until IS NOT NULL AND paused_until > now_ms THEN
        wait_ms := paused_until - now_ms;
        RETURN;
    END IF;
    DELETE FROM kiln_provider_calls c
        WHERE c.provider = p_provider AND c.started_ms < window_start
          AND (c.done OR NOT EXISTS (
              SELECT 1 FROM kiln_nodes n
              WHERE n.id = c.node AND n.heartbeat_ms >= now_ms - p_alive_ms));
    SELECT
        count(*) FILTER (WHERE NOT c.done AND (c.node = p_node OR EXISTS (
            SELECT 1 FROM kiln_nodes n
            WHERE n.id = c.node AND n.heartbeat_ms >= now_ms - p_alive_ms))),
        count(*) FILTER (WHERE c.started_ms >= window_start),
        coalesce(sum(c.tokens) FILTER (WHERE c.started_ms >= window_start), 0),
        min(c.started_ms) FILTER (WHERE c.started_ms >= window_start)
    INTO in_flight, requests, used, oldest
    FROM kiln_provider_calls c WHERE c.provider = p_provider;
    IF p_max_concurrent IS NOT NULL AND in_flight >= p_max_concurrent THEN
        wait_ms := 0;
        RETURN;
    END IF;
    -- A reservation larger than the whole minute waits for an empty window, not forever.
    IF p_tpm IS NOT NULL THEN
        reserve := least(reserve, p_tpm);
    END IF;
    IF (p_rpm IS NOT NULL AND requests >= p_rpm)
        OR (p_tpm IS NOT NULL AND used + reserve > p_tpm) THEN
        -- Until the oldest request of the window leaves it; then look again.
        wait_ms := greatest(coalesce(oldest, now_ms) + window_ms - now_ms, 1);
        RETURN;
    END IF;
    INSERT INTO kiln_provider_calls (provider, node, started_ms, tokens)
        VALUES (p_provider, p_node, now_ms, reserve) RETURNING id INTO call;
    wait_ms := 0;
END;
$$;
