"""Appending and reading against a real Postgres: versions, atomicity, conflicts."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.wrappers_pb2 import StringValue

from libs.db import transaction
from libs.errors import Conflict, InvalidArgument
from libs.eventstore import ANY_VERSION, NO_STREAM, EventStore, WrongExpectedVersion
from tests.eventstore.events import CATALOG, note


async def _row_count(store: EventStore) -> int:
    async with store.pool.acquire() as conn:
        return await conn.fetchval(f'SELECT count(*) FROM "{store.schema}".events')


async def test_append_new_stream_numbers_versions_and_positions(event_store: EventStore) -> None:
    result = await event_store.append(
        "loan-1", [note("a"), note("b"), note("c")], expected_version=NO_STREAM
    )

    assert result.stream_version == 3
    assert list(result.positions) == sorted(result.positions)
    events = await event_store.read_stream("loan-1")
    assert [e.stream_version for e in events] == [1, 2, 3]
    assert [CATALOG.decode(e.event_type, e.payload).value for e in events] == ["a", "b", "c"]
    assert [e.global_position for e in events] == list(result.positions)


async def test_metadata_and_envelope_round_trip(event_store: EventStore) -> None:
    event = note(
        "x",
        correlation_id="req-7",
        causation_id="cmd-3",
        actor="alice",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    await event_store.append("s", [event], expected_version=NO_STREAM)

    (stored,) = await event_store.read_stream("s")
    assert stored.event_id == event.event_id
    assert stored.event_type == "google.protobuf.StringValue"
    assert stored.schema_version == 1
    assert stored.subject_tail == "note.added"
    assert stored.metadata == event.metadata
    assert StringValue.FromString(stored.payload).value == "x"
    assert stored.recorded_at.tzinfo is not None


async def test_expected_version_continues_a_stream(event_store: EventStore) -> None:
    await event_store.append("s", [note("1")], expected_version=NO_STREAM)
    result = await event_store.append("s", [note("2"), note("3")], expected_version=1)

    assert result.stream_version == 3
    assert await event_store.stream_version("s") == 3


@pytest.mark.parametrize(
    ("existing", "expected"),
    [(0, 1), (0, 5), (2, 1), (2, 3), (2, NO_STREAM)],
    ids=["missing-expect-1", "missing-expect-5", "behind", "ahead", "exists-expect-none"],
)
async def test_wrong_expected_version_is_rejected_and_writes_nothing(
    event_store: EventStore, existing: int, expected: int
) -> None:
    if existing:
        await event_store.append(
            "s", [note(str(i)) for i in range(existing)], expected_version=NO_STREAM
        )
    before = await _row_count(event_store)

    with pytest.raises(WrongExpectedVersion) as raised:
        await event_store.append("s", [note("late"), note("later")], expected_version=expected)

    assert isinstance(raised.value, Conflict)
    assert raised.value.actual == existing
    assert "retry" in str(raised.value)
    assert await _row_count(event_store) == before
    assert await event_store.stream_version("s") == existing


async def test_any_version_appends_wherever_the_stream_is(event_store: EventStore) -> None:
    await event_store.append("s", [note("1")], expected_version=ANY_VERSION)
    result = await event_store.append("s", [note("2")], expected_version=ANY_VERSION)

    assert result.stream_version == 2


async def test_racing_appenders_on_one_version_exactly_one_wins(event_store: EventStore) -> None:
    await event_store.append("s", [note("0")], expected_version=NO_STREAM)

    results = await asyncio.gather(
        *(event_store.append("s", [note(f"w{i}")], expected_version=1) for i in range(20)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, WrongExpectedVersion)]
    assert len(winners) == 1
    assert len(losers) == 19
    assert await event_store.stream_version("s") == 2


async def test_append_inside_a_rolled_back_transaction_leaves_nothing(
    event_store: EventStore,
) -> None:
    async with event_store.pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await event_store.append("s", [note("a")], expected_version=NO_STREAM, conn=conn)
                raise RuntimeError("effect failed")

    assert await event_store.read_stream("s") == []
    assert await event_store.stream_version("s") == NO_STREAM


async def test_reusing_an_event_id_is_a_conflict_and_writes_nothing(
    event_store: EventStore,
) -> None:
    event = note("once")
    await event_store.append("a", [event], expected_version=NO_STREAM)

    with pytest.raises(Conflict, match="fresh id"):
        await event_store.append("b", [note("ok"), event], expected_version=NO_STREAM)

    assert await event_store.read_stream("b") == []


@pytest.mark.parametrize(
    ("stream_id", "events", "expected"),
    [("", [note("a")], NO_STREAM), ("s", [], NO_STREAM), ("s", [note("a")], -2)],
    ids=["empty-stream-id", "no-events", "bad-expected-version"],
)
async def test_bad_append_arguments_are_invalid(
    event_store: EventStore, stream_id: str, events: list, expected: int
) -> None:
    with pytest.raises(InvalidArgument):
        await event_store.append(stream_id, events, expected_version=expected)


async def test_read_all_pages_in_position_order(event_store: EventStore) -> None:
    for i in range(5):
        await event_store.append(f"s{i}", [note(str(i))], expected_version=NO_STREAM)

    first = await event_store.read_all(limit=3)
    rest = await event_store.read_all(after_position=first[-1].global_position)

    positions = [e.global_position for e in first + rest]
    assert positions == sorted(positions)
    assert len(positions) == 5


async def test_the_append_signal_rings_after_commit_and_never_after_rollback(
    event_store: EventStore,
) -> None:
    signal = event_store.signal
    signal.leading_here = True  # as if this process's relay led: no NOTIFY needed
    signal.local.clear()
    async with transaction(event_store.pool) as conn:
        await event_store.append("s", [note("a")], expected_version=NO_STREAM, conn=conn)
        assert not signal.local.is_set(), "rang before the events were visible"
    assert signal.local.is_set()

    signal.local.clear()
    with pytest.raises(RuntimeError):
        async with transaction(event_store.pool) as conn:
            await event_store.append("t", [note("b")], expected_version=NO_STREAM, conn=conn)
            raise RuntimeError("roll back")
    assert not signal.local.is_set()

    await event_store.append("u", [note("c")], expected_version=NO_STREAM)
    assert signal.local.is_set()
