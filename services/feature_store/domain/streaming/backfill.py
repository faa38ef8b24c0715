"""Backfill's pure part: a stream view's tiles recomputed from raw events, in batch.

It parses (``events.parse_event``) and merges (``aggregation.build_tiles``) with the code
streaming uses, so over the events a stream ingested it reproduces the streamed tiles
identically (app/streaming/backfill.py reads the log and writes the tiles).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.feature_store.domain.streaming.aggregation import (
    StreamEvent,
    StreamViewSpec,
    TileKey,
    TileState,
    build_tiles,
    to_us,
)
from services.feature_store.domain.streaming.events import (
    EventRejected,
    RawEvent,
    decode_payload,
    parse_event,
)


@dataclass
class BackfillResult:
    events_read: int = 0
    events_used: int = 0
    """Events the view accepted (parsed, within lateness)."""
    tiles_written: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    """Reason -> events the view could not use."""


def accepted_events(
    spec: StreamViewSpec, raw_events: Iterable[RawEvent], result: BackfillResult
) -> Iterable[StreamEvent]:
    """The raw events ``spec`` accepts, as streaming would (counting the rest in result)."""
    for raw in raw_events:
        result.events_read += 1
        try:
            payload = decode_payload(raw.payload)
            event = parse_event(
                spec,
                payload,
                arrival_us=to_us(raw.arrival_time),
                sequence=raw.stream_sequence,
            )
        except EventRejected as exc:
            result.rejected[exc.reason] += 1
            continue
        result.events_used += 1
        yield event


def backfill_tiles(
    spec: StreamViewSpec, raw_events: Iterable[RawEvent]
) -> tuple[dict[TileKey, TileState], BackfillResult]:
    """Tiles of ``raw_events`` (any order) for ``spec``: pure, no storage."""
    result = BackfillResult()
    built = build_tiles(spec, accepted_events(spec, raw_events, result))
    result.tiles_written = len(built)
    return built, result
