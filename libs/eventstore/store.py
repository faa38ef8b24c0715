"""Appending to and reading from one service's event store in Postgres.

Appends are single statements: the stream-version check and the inserts run in
one round trip, take only the stream's own row lock (never a table lock) and
either write every event or none. Reads here are one-shot; a process that
follows the log as it grows uses ``EventTailer``, which never skips an event
that commits late with a lower position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

import asyncpg
from opentelemetry import trace

from libs.db import Migration, load_migrations, on_commit, quote_ident
from libs.db.literals import text_literal, uuid_array_literal
from libs.errors import Conflict, InvalidArgument
from libs.eventstore.model import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventMetadata,
    NewEvent,
    RecordedEvent,
    WrongExpectedVersion,
)
from libs.eventstore.signal import AppendSignal

_tracer = trace.get_tracer(__name__)

_MIGRATIONS_DIR = Path(__file__).parent / "migrations"

EVENT_COLUMNS = (
    "global_position, stream_id, stream_version, event_id, event_type, schema_version, "
    "payload, subject_tail, correlation_id, causation_id, actor, traceparent, recorded_at"
)


class _Statements:
    """SQL text built once per schema; only the quoted schema name is interpolated."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema, what="event store schema")
        insert_events = f"""
            INSERT INTO {s}.events (stream_id, stream_version, event_id, event_type,
                schema_version, payload, subject_tail, correlation_id, causation_id, actor,
                traceparent)
            SELECT $1, stream.base + e.ord, e.event_id, e.event_type, e.schema_version,
                   e.payload, e.subject_tail, e.correlation_id, e.causation_id, e.actor,
                   e.traceparent
            FROM stream,
                 unnest($4::uuid[], $5::text[], $6::int[], $7::bytea[], $8::text[],
                        $9::text[], $10::text[], $11::text[], $12::text[])
                 WITH ORDINALITY AS e(event_id, event_type, schema_version, payload,
                                      subject_tail, correlation_id, causation_id, actor,
                                      traceparent, ord)
            ORDER BY e.ord
            RETURNING global_position, stream_version, recorded_at"""
        # Each variant first writes the stream row (which also gives the transaction
        # its xid before any position is drawn, see ADR 0002), then inserts the events
        # numbered from the stream's previous version. $2 = expected version, $3 = count;
        # the NO_STREAM and ANY variants restate $2 in a WHERE so all three take the same
        # parameters (Postgres must see every parameter to type it).
        self.append_expected = f"""
            WITH stream AS (
                UPDATE {s}.streams SET version = version + $3
                WHERE stream_id = $1 AND version = $2
                RETURNING version - $3 AS base)
            {insert_events}"""
        self.append_no_stream = f"""
            WITH stream AS (
                INSERT INTO {s}.streams (stream_id, version)
                SELECT $1, $3 WHERE $2::bigint = 0
                ON CONFLICT (stream_id) DO NOTHING
                RETURNING 0::bigint AS base)
            {insert_events}"""
        self.append_any = f"""
            WITH stream AS (
                INSERT INTO {s}.streams AS st (stream_id, version)
                SELECT $1, $3 WHERE $2::bigint = -1
                ON CONFLICT (stream_id) DO UPDATE SET version = st.version + EXCLUDED.version
                RETURNING st.version - $3 AS base)
            {insert_events}"""
        self.stream_version = f"SELECT version FROM {s}.streams WHERE stream_id = $1"
        self.read_stream = f"""
            SELECT {EVENT_COLUMNS} FROM {s}.events
            WHERE stream_id = $1 AND stream_version >= $2
            ORDER BY stream_version LIMIT $3"""
        self.read_all = f"""
            SELECT {EVENT_COLUMNS} FROM {s}.events
            WHERE global_position > $1 ORDER BY global_position LIMIT $2"""
        self.load_checkpoint = f"SELECT position FROM {s}.checkpoints WHERE name = $1"
        self.save_checkpoint = f"""
            INSERT INTO {s}.checkpoints (name, position) VALUES ($1, $2)
            ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"""
        self._processed_events = f"{s}.processed_events"
        # Rows this transaction inserted carry its id as xmin; rows recorded earlier an
        # older (or frozen) one.
        self.processed_here = f"""
            SELECT event_id FROM {s}.processed_events
            WHERE consumer = $1 AND event_id = ANY($2::uuid[])
              AND xmin = pg_current_xact_id()::xid"""
        # A bounded slice per statement: short transactions, no long lock on the table.
        self.prune_processed = f"""
            DELETE FROM {s}.processed_events WHERE (consumer, event_id) IN (
                SELECT consumer, event_id FROM {s}.processed_events
                WHERE consumer = $1 AND processed_at < now() - $2::interval LIMIT $3)"""

    def mark_processed(self, consumer: str, event_ids: Sequence[UUID]) -> str:
        """Record ``event_ids`` as processed by ``consumer``, skipping those recorded before.

        Parameterless SQL text (values rendered by ``libs.db.literals``): it opens the
        consumer's transaction in the same round trip as ``BEGIN``.
        """
        return (
            f"INSERT INTO {self._processed_events} (consumer, event_id) "
            f"SELECT {text_literal(consumer)}, unnest({uuid_array_literal(event_ids)}) "
            "ON CONFLICT DO NOTHING"
        )


def record_from_row(row: asyncpg.Record) -> RecordedEvent:
    """Build a ``RecordedEvent`` from a row selected with ``EVENT_COLUMNS``."""
    return RecordedEvent(
        global_position=row["global_position"],
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        payload=bytes(row["payload"]),
        subject_tail=row["subject_tail"],
        metadata=EventMetadata(
            correlation_id=row["correlation_id"],
            causation_id=row["causation_id"],
            actor=row["actor"],
            traceparent=row["traceparent"],
        ),
        recorded_at=row["recorded_at"],
    )


class EventStore:
    """The event log of one service, stored in that service's Postgres schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self.schema = schema
        self.sql = _Statements(schema)
        self.signal = AppendSignal(pool, f"lathe_events.{schema}")
        """Rings after each committed append; the relay waits on it."""

    @staticmethod
    def migrations() -> list[Migration]:
        """The tables this library needs in a service's schema (apply before the service's own)."""
        return load_migrations("eventstore", _MIGRATIONS_DIR)

    @property
    def notify_channel(self) -> str:
        """The LISTEN channel notified after appends from processes whose relay is not leading."""
        return self.signal.channel

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def _connection(
        self, conn: asyncpg.Connection | None
    ) -> AsyncIterator[asyncpg.Connection]:
        if conn is not None:
            yield conn
        else:
            async with self._pool.acquire() as acquired:
                yield acquired

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int,
        conn: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append ``events`` atomically to ``stream_id`` if it is at ``expected_version``.

        ``expected_version`` is the stream's current version, ``NO_STREAM`` (0) for a
        new stream or ``ANY_VERSION`` (-1). Pass ``conn`` to append inside a caller's
        transaction (e.g. together with a projection update); open that transaction with
        ``libs.db.transaction`` so the relay is told at its commit (otherwise it finds the
        events at its next poll). Raises ``WrongExpectedVersion`` (nothing written) when
        another writer got there first.
        """
        if not stream_id:
            raise InvalidArgument("stream_id must not be empty")
        if not events:
            raise InvalidArgument("append needs at least one event")
        if expected_version < ANY_VERSION:
            raise InvalidArgument(
                f"expected_version must be >= -1 (ANY_VERSION), got {expected_version}"
            )
        if expected_version == ANY_VERSION:
            statement = self.sql.append_any
        elif expected_version == NO_STREAM:
            statement = self.sql.append_no_stream
        else:
            statement = self.sql.append_expected
        columns = _columns(events)
        with _tracer.start_as_current_span(
            "eventstore.append",
            attributes={
                "lathe.stream_id": stream_id,
                "lathe.event_count": len(events),
                "db.namespace": self.schema,
            },
        ):
            async with self._connection(conn) as connection:
                try:
                    rows = await connection.fetch(
                        statement, stream_id, expected_version, len(events), *columns
                    )
                except asyncpg.UniqueViolationError as exc:
                    raise Conflict(
                        f"an event id in this append to {stream_id!r} was recorded already "
                        f"({exc.detail}); each event needs a fresh id"
                    ) from exc
                if not rows:
                    actual = await connection.fetchval(self.sql.stream_version, stream_id)
                    raise WrongExpectedVersion(stream_id, expected_version, actual or NO_STREAM)
        if conn is None:
            self.signal.appended()
        else:
            on_commit(self.signal.appended)
        rows = sorted(rows, key=lambda row: row["stream_version"])
        recorded = tuple(
            RecordedEvent(
                global_position=row["global_position"],
                stream_id=stream_id,
                stream_version=row["stream_version"],
                event_id=event.event_id,
                event_type=event.event_type,
                schema_version=event.schema_version,
                payload=event.payload,
                subject_tail=event.subject_tail,
                metadata=event.metadata,
                recorded_at=row["recorded_at"],
            )
            for row, event in zip(rows, events, strict=True)
        )
        return AppendResult(recorded)

    async def stream_version(
        self, stream_id: str, *, conn: asyncpg.Connection | None = None
    ) -> int:
        """The stream's current version, ``NO_STREAM`` (0) if it has no events."""
        async with self._connection(conn) as connection:
            version = await connection.fetchval(self.sql.stream_version, stream_id)
        return version or NO_STREAM

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream in version order (committed ones only)."""
        async with self._connection(conn) as connection:
            rows = await connection.fetch(self.sql.read_stream, stream_id, from_version, limit)
        return [record_from_row(row) for row in rows]

    async def read_all(
        self,
        *,
        after_position: int = 0,
        limit: int = 1000,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """A one-shot page of all committed events in position order.

        Not for following the log: a transaction still in flight may later commit
        an event below the last position returned. Use ``EventTailer`` for that.
        """
        async with self._connection(conn) as connection:
            rows = await connection.fetch(self.sql.read_all, after_position, limit)
        return [record_from_row(row) for row in rows]

    async def load_checkpoint(self, name: str, *, conn: asyncpg.Connection | None = None) -> int:
        async with self._connection(conn) as connection:
            position = await connection.fetchval(self.sql.load_checkpoint, name)
        return position or 0

    async def save_checkpoint(
        self, name: str, position: int, *, conn: asyncpg.Connection | None = None
    ) -> None:
        async with self._connection(conn) as connection:
            await connection.execute(self.sql.save_checkpoint, name, position)


def _columns(events: Sequence[NewEvent]) -> tuple[list[object], ...]:
    return (
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.schema_version for e in events],
        [e.payload for e in events],
        [e.subject_tail for e in events],
        [e.metadata.correlation_id for e in events],
        [e.metadata.causation_id for e in events],
        [e.metadata.actor for e in events],
        [e.metadata.traceparent for e in events],
    )
