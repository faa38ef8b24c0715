-- The event store of one service, in that service's own schema (search_path).
-- See docs/adr/0002-gap-safe-event-tailing.md for why positions are read the
-- way they are.

CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         bytea       NOT NULL,
    subject_tail    text        NOT NULL,
    correlation_id  text        NOT NULL DEFAULT '',
    causation_id    text        NOT NULL DEFAULT '',
    actor           text        NOT NULL DEFAULT '',
    traceparent     text        NOT NULL DEFAULT '',
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

-- One row per stream holding its current version: appends take this row's lock
-- (per stream, never global) and check the expected version against it.
CREATE TABLE streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version > 0)
);

-- Where each tailer (the relay, projections) has got to.
CREATE TABLE checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Exactly-once effects: a consumer records each event it handled in the same
-- transaction as the handler's effect.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Wakes the relay right after a commit (one notification per statement; Postgres
-- folds identical notifications of one transaction into one).
CREATE FUNCTION notify_events_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lathe_events.' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_appended
AFTER INSERT ON events
FOR EACH STATEMENT EXECUTE FUNCTION notify_events_appended();
