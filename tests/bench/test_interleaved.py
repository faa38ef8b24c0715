"""The benchmark harness's interleaving: chunks, switch-in calls kept apart, counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.service_process import interleaved


def _recorder(order: list[str], key: str) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        order.append(key)

    return call


async def test_each_chunk_starts_with_a_switch_in_call_kept_apart() -> None:
    order: list[str] = []
    result = await interleaved(
        {"a": _recorder(order, "a"), "b": _recorder(order, "b")},
        samples=5,
        warmup=1,
        chunk=2,
    )
    # warm-up, then chunks of one switch-in call + 2 steady calls, the last chunk short
    assert "".join(order) == "ab" + "aaabbb" * 2 + "aabb"
    assert {key: len(v) for key, v in result.steady.items()} == {"a": 5, "b": 5}
    assert {key: len(v) for key, v in result.switch_in.items()} == {"a": 3, "b": 3}
    assert all(ns >= 0 for v in result.steady.values() for ns in v)
