-- Read model of registered models, maintained from the event log in the same
-- transaction as each append, and rebuildable from it (ModelsProjection).
CREATE TABLE models (
    name           text        PRIMARY KEY,
    description    text        NOT NULL,
    owner          text        NOT NULL,
    tags           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL,
    created_by     text        NOT NULL,
    stream_version bigint      NOT NULL
);

CREATE INDEX models_owner_name ON models (owner, name);
CREATE INDEX models_tags ON models USING gin (tags);
