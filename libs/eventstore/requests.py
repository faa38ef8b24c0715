"""Client request ids: a mutation a client retries after an ambiguous error applies once.

A caller that got UNAVAILABLE or DEADLINE_EXCEEDED cannot know whether its change was
committed. It retries with the same request id, and the service answers the retry with
the first attempt's result instead of applying the change again. The id, the RPC, a
digest of the request and the result are recorded in the service's ``client_requests``
table inside the transaction that records the change's events, so they commit (or vanish)
together: a crash between commit and reply cannot let a retry apply twice
(docs/adr/0015-client-request-ids.md).

Adopting it for one RPC takes a line in ``api/`` and one in the ``app/`` command::

    request = ClientRequest.of("SetAlias", message)  # None when the caller sent no id
    ...
    async with transaction(pool) as conn:
        return await requests.once(conn, request, message_pb2.Alias, lambda: move(conn))
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import asyncpg
from google.protobuf.message import Message

from libs.db import delete_in_slices, quote_ident
from libs.errors import InvalidArgument
from libs.eventstore.store import EventStore

_log = logging.getLogger(__name__)

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""1-128 ASCII letters, digits, '.', '_', ':' and '-', starting with a letter or digit."""
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)
DEFAULT_WINDOW = timedelta(hours=24)
"""How long an applied request id is honoured (at least) before it is pruned."""
PRUNE_INTERVAL_S = 3600.0

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class ClientRequest:
    """One mutation as its client identified it."""

    request_id: str
    """The client's id for one logical change, the same across its retries."""
    method: str
    """The RPC it was sent to, e.g. ``SetAlias``: an id names one call of one method."""
    digest: bytes
    """SHA-256 of the request with its id left out: a retry must ask for the same thing."""

    @classmethod
    def of(
        cls, method: str, message: Message, *, field: str = "request_id"
    ) -> ClientRequest | None:
        """The request ``message`` identifies by its ``field``; None when that is empty.

        Raises InvalidArgument for an id that breaks ``REQUEST_ID_PATTERN``.
        """
        request_id = getattr(message, field)
        if not request_id:
            return None
        if not _REQUEST_ID_RE.fullmatch(request_id):
            shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."
            raise InvalidArgument(
                f"{field} {shown!r} is not a valid request id: use 1-128 ASCII letters, digits, "
                "'.', '_', ':' and '-', starting with a letter or digit (a UUID is a good choice)"
            )
        unkeyed = type(message)()
        unkeyed.CopyFrom(message)
        unkeyed.ClearField(field)
        digest = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).digest()
        return cls(request_id=request_id, method=method, digest=digest)


class RequestLog:
    """The request ids one service applied, kept in its event-store schema."""

    def __init__(self, store: EventStore, *, window: timedelta = DEFAULT_WINDOW) -> None:
        self._pool = store.pool
        self.window = window
        s = quote_ident(store.schema, what="event store schema")
        # Claiming first makes a concurrent duplicate wait on the key until the claiming
        # transaction commits (it then finds the row) or rolls back (it then claims).
        self._claim = f"""
            INSERT INTO {s}.client_requests (request_id, method, digest) VALUES ($1, $2, $3)
            ON CONFLICT (request_id) DO NOTHING RETURNING true"""
        self._complete = f"UPDATE {s}.client_requests SET reply = $2 WHERE request_id = $1"
        self._find = f"""
            SELECT method, digest, reply, recorded_at FROM {s}.client_requests
            WHERE request_id = $1"""
        self._prune = f"""
            DELETE FROM {s}.client_requests WHERE request_id IN (
                SELECT request_id FROM {s}.client_requests
                WHERE recorded_at < now() - $1::interval LIMIT $2)"""

    async def once(
        self,
        conn: asyncpg.Connection,
        request: ClientRequest | None,
        result_type: type[M],
        apply: Callable[[], Awaitable[M]],
    ) -> M:
        """``apply()`` unless ``request`` was applied already; either way its result.

        Call it first in a READ COMMITTED transaction (``libs.db.transaction``) that also
        records the change's events, before reading the state the change depends on:
        a retry must not be judged against the state its first attempt made. The result
        is stored as the request's reply, so ``apply`` must return what every retry
        should get. A concurrent attempt with the same id waits here for the first and
        then returns its result (or applies, if the first rolled back). Raises
        InvalidArgument when the id was used for another request.
        """
        if request is None:
            return await apply()
        while True:
            if await conn.fetchval(self._claim, request.request_id, request.method, request.digest):
                result = await apply()
                await conn.execute(
                    self._complete, request.request_id, result.SerializeToString(deterministic=True)
                )
                return result
            row = await conn.fetchrow(self._find, request.request_id)
            if row is not None:  # else pruned between the two statements: claim again
                return _recorded_result(request, row, result_type)

    async def replay(self, request: ClientRequest | None, result_type: type[M]) -> M | None:
        """The recorded result of ``request`` if it was applied, without waiting for an
        attempt in flight; for skipping work (e.g. an upload) a retry does not need."""
        if request is None:
            return None
        row = await self._pool.fetchrow(self._find, request.request_id)
        return _recorded_result(request, row, result_type) if row is not None else None

    async def prune(self) -> int:
        """Forget ids applied longer than the window ago; how many."""
        return await delete_in_slices(self._pool, self._prune, self.window)

    async def run(self, stop: asyncio.Event, *, interval_s: float = PRUNE_INTERVAL_S) -> None:
        """Prune every ``interval_s`` until ``stop`` is set (a service's background task)."""
        while not stop.is_set():
            try:
                pruned = await self.prune()
            except Exception as exc:  # a janitor: the next round retries; serving goes on
                _log.warning("could not prune client request ids (%r); retrying later", exc)
            else:
                if pruned:
                    _log.info("pruned %d client request id(s) past the window", pruned)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def _recorded_result(request: ClientRequest, row: asyncpg.Record, result_type: type[M]) -> M:
    if row["method"] != request.method or bytes(row["digest"]) != request.digest:
        what = (
            f"a different {request.method} request"
            if row["method"] == request.method
            else f"a {row['method']} request"
        )
        raise InvalidArgument(
            f"request_id {request.request_id!r} was already used for {what} "
            f"(at {row['recorded_at'].isoformat()}); send a fresh request id with each new "
            "change, and the same one only to retry that same change"
        )
    assert row["reply"] is not None, "a claimed request id commits with its reply"
    return result_type.FromString(row["reply"])
