"""The request deadline: seen by the call and its subtasks, not by work it leaves behind."""

from __future__ import annotations

import asyncio

from libs.deadlines import (
    no_deadline,
    remaining_time_s,
    reset_deadline,
    set_deadline_from_remaining,
)


async def test_subtasks_share_the_deadline_and_leftover_tasks_lose_it_when_the_call_ends() -> None:
    assert remaining_time_s() is None
    seen: dict[str, float | None] = {}
    release = asyncio.Event()

    async def probe() -> float | None:
        await asyncio.sleep(0)
        return remaining_time_s()

    async def left_behind() -> None:
        seen["left behind, during the call"] = remaining_time_s()
        await release.wait()
        seen["left behind, after the call"] = remaining_time_s()

    async def call() -> asyncio.Task[None]:
        token = set_deadline_from_remaining(5.0)
        try:
            (seen["subtask"],) = await asyncio.gather(probe())
            background = asyncio.create_task(left_behind())
            with no_deadline():
                detached = asyncio.create_task(probe())
            await asyncio.sleep(0)
            seen["detached"] = await detached
            return background
        finally:
            reset_deadline(token)

    background = await call()
    release.set()
    await background

    assert 4.9 < (seen["subtask"] or 0) <= 5.0
    assert 4.9 < (seen["left behind, during the call"] or 0) <= 5.0
    assert seen["left behind, after the call"] is None
    assert seen["detached"] is None
    assert remaining_time_s() is None
