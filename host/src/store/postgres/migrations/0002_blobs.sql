-- Upload and artifact bytes in the database, so nodes sharing it need no shared disk.
-- Each is split into chunks of at most 1 MiB numbered from 0, written in the transaction
-- that makes it visible. Uploads and artifacts written before this migration have their
-- bytes in the data dir of the node that stored them, which still serves them.

-- An upload's bytes, deleted with its record.
CREATE TABLE kiln_file_chunks (
    file_id uuid NOT NULL REFERENCES kiln_files (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- Uploads are mostly compressed already (PDF, DOCX): keep their chunks out of line and do
-- not spend CPU compressing them again.
ALTER TABLE kiln_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- The artifacts of the attempt that completed a job, replaced as a whole by each
-- completing attempt and deleted with the job.
CREATE TABLE kiln_artifact_chunks (
    job_id uuid NOT NULL,
    name text NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job_id, name, seq)
);
