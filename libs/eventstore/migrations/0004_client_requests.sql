-- Client request ids (docs/adr/0015-client-request-ids.md): a mutation a client retries
-- with the same id applies once. The row is inserted in the transaction that records the
-- mutation's events (first, so a concurrent duplicate waits on its key), so it commits or
-- vanishes with them: a crash between commit and reply leaves it for the retry to find.
CREATE TABLE client_requests (
    request_id  text        PRIMARY KEY,
    method      text        NOT NULL,               -- e.g. SetAlias: one id, one RPC
    digest      bytea       NOT NULL,               -- sha256 of the request, id left out
    reply       bytea,                              -- the result, set before commit
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Pruning past the window is a range scan.
CREATE INDEX client_requests_by_age ON client_requests (recorded_at);
