-- Read model of training jobs: the latest folded state of each job's event stream,
-- written in the transaction that appends (store/jobs.py) and rebuildable from the log.
CREATE TABLE jobs (
    job_id         text        PRIMARY KEY,
    model_name     text        NOT NULL,
    state          smallint    NOT NULL,       -- lathe.trainer.v1.JobState
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    stream_version bigint      NOT NULL,
    body           bytea       NOT NULL        -- TrainingJob protobuf
);

CREATE INDEX jobs_model_created ON jobs (model_name, created_at DESC, job_id DESC);
CREATE INDEX jobs_state_created ON jobs (state, created_at DESC, job_id DESC);
