-- Upload leases (app/upload_lease.py). Each registry process streams uploads into
-- incoming/<owner>/ under the artifact root and keeps a row here renewed while it lives.
-- The partial uploads of an owner whose lease lapsed, or that has no row, belong to a
-- process that died: any registry process sharing the root deletes them.
CREATE TABLE upload_leases (
    owner      text        PRIMARY KEY,            -- the directory name under incoming/
    host       text        NOT NULL,               -- where the process ran (for operators)
    pid        integer     NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL                 -- by Postgres's clock: one for all hosts
);
