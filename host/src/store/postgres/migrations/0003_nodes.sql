-- The Kiln nodes sharing this database: each writes its record (JSON: address, version,
-- start, running jobs, stop) with a heartbeat every few seconds, so any node can list the
-- cluster and tell a live node from one that stopped or stopped answering.
CREATE TABLE kiln_nodes (
    id uuid PRIMARY KEY,
    heartbeat_ms bigint NOT NULL,
    record text NOT NULL
);
CREATE INDEX kiln_nodes_by_heartbeat ON kiln_nodes (heartbeat_ms);
