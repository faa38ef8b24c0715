"""Transactions opened together with their first statement, and the literals spliced into
that statement, against a real Postgres (ADR 0013)."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.db import transaction_opened_with
from libs.db.literals import text_literal, uuid_array_literal
from libs.errors import InvalidArgument

# Any text Postgres can hold, and text built from the pieces of a dollar-quote tag, so
# that values containing or ending in a tag ("$lathe$", "x$lathe", "$lathe0$$") come up.
_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
_TAG_LIKE = st.lists(st.sampled_from(["$", "lathe", "0", "1", "'", "\\", "a", ";"])).map("".join)


async def test_text_literals_read_back_as_the_text_they_render(db_pool: asyncpg.Pool) -> None:
    loop = asyncio.get_running_loop()

    async def read_back(values: list[str]) -> list[str]:
        rendered = ", ".join(text_literal(value) for value in values)
        return list(await db_pool.fetchval(f"SELECT ARRAY[{rendered}]::text[]"))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values=st.lists(_TEXT | _TAG_LIKE, min_size=1, max_size=6))
    def reads_back(values: list[str]) -> None:
        assert asyncio.run_coroutine_threadsafe(read_back(values), loop).result(10) == values

    # Hypothesis' given is synchronous: it runs in a thread, the queries on this loop.
    await asyncio.to_thread(reads_back)


async def test_literals_refuse_what_they_cannot_render(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        text_literal("a\x00b")
    with pytest.raises(TypeError, match="UUID objects"):
        uuid_array_literal([uuid4(), "0b7c1f9e-0000-0000-0000-000000000000"])  # type: ignore[list-item]
    ids = [uuid4(), uuid4()]
    assert await db_pool.fetchval(f"SELECT {uuid_array_literal(ids)}") == ids
    assert await db_pool.fetchval(f"SELECT {uuid_array_literal([])}") == []


@pytest.fixture
async def table(db_pool: asyncpg.Pool, unique_name: str) -> str:
    name = f"opened_{unique_name}"
    await db_pool.execute(f"CREATE TABLE {name} (n int PRIMARY KEY)")
    return name


async def _rows(pool: asyncpg.Pool, table: str) -> list[int]:
    return [r["n"] for r in await pool.fetch(f"SELECT n FROM {table} ORDER BY n")]


async def test_the_block_commits_with_its_first_statement(
    db_pool: asyncpg.Pool, table: str
) -> None:
    async with db_pool.acquire() as conn:
        async with transaction_opened_with(conn, f"INSERT INTO {table} VALUES (1), (2)") as status:
            assert status == "INSERT 0 2"
            assert conn.is_in_transaction()
            await conn.execute(f"INSERT INTO {table} VALUES ($1)", 3)
            assert await _rows(db_pool, table) == []  # not committed yet
        assert not conn.is_in_transaction()
    assert await _rows(db_pool, table) == [1, 2, 3]


async def test_a_raising_block_rolls_everything_back(db_pool: asyncpg.Pool, table: str) -> None:
    async with db_pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="handler failed"):
            async with transaction_opened_with(conn, f"INSERT INTO {table} VALUES (1)"):
                await conn.execute(f"INSERT INTO {table} VALUES (2)")
                raise RuntimeError("handler failed")
        assert not conn.is_in_transaction()
        # A failing first statement: the BEGIN before it is rolled back too.
        with pytest.raises(asyncpg.UniqueViolationError):
            async with transaction_opened_with(conn, f"INSERT INTO {table} VALUES (7), (7)"):
                pytest.fail("the block must not run when its first statement failed")
        assert not conn.is_in_transaction()
        # The connection is fine for what comes next, asyncpg's transactions included.
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (5)")
    assert await _rows(db_pool, table) == [5]


async def test_nested_transactions_inside_are_savepoints(db_pool: asyncpg.Pool, table: str) -> None:
    async with (
        db_pool.acquire() as conn,
        transaction_opened_with(conn, f"INSERT INTO {table} VALUES (1)"),
    ):
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES (2)")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():  # nested twice, rolled back alone
                    await conn.execute(f"INSERT INTO {table} VALUES (3)")
                    await conn.execute(f"INSERT INTO {table} VALUES (1)")
            await conn.execute(f"INSERT INTO {table} VALUES (4)")
        with pytest.raises(ValueError):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (5)")
                raise ValueError("undo only this block")
        with pytest.raises(asyncpg.InterfaceError, match="isolation level"):
            conn.transaction(isolation="serializable")
    assert await _rows(db_pool, table) == [1, 2, 4]


async def test_it_refuses_connections_it_cannot_use(
    db_pool: asyncpg.Pool, database_url: str, table: str
) -> None:
    async with db_pool.acquire() as conn, conn.transaction():
        with pytest.raises(asyncpg.InterfaceError, match="outside any transaction"):
            async with transaction_opened_with(conn, "SELECT 1"):
                pass
    plain = await asyncpg.connect(database_url)
    try:
        with pytest.raises(TypeError, match="connect_pool"):
            async with transaction_opened_with(plain, "SELECT 1"):
                pass
    finally:
        await plain.close()


async def test_a_closed_pool_connection_reads_as_the_database_gone(db_pool: asyncpg.Pool) -> None:
    """The consumer tells a lost database from a bug by asyncpg's InterfaceError."""
    async with db_pool.acquire() as conn:
        conn.terminate()
        with pytest.raises(asyncpg.InterfaceError):
            async with transaction_opened_with(conn, "SELECT 1"):
                pass


def test_uuid_literal_text_is_canonical() -> None:
    value = UUID("0B7C1F9E-1234-4ABC-8DEF-00000000000A")
    assert uuid_array_literal([value]) == "'{0b7c1f9e-1234-4abc-8def-00000000000a}'::uuid[]"
