"""Stream views by source, how long their tiles matter, and merging events into states.

What ingestion (app/streaming/ingest.py) decides without I/O: which view versions read an
event's source, which encoded tile states an event batch changes into what, and which
tiles no read or event can reach any more (pruned).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from services.feature_store.domain.definitions.read_plan import Definitions
from services.feature_store.domain.keys import join_keys_of
from services.feature_store.domain.streaming.aggregation import (
    StreamEvent,
    StreamViewSpec,
    TileState,
    decode_state,
    encode_state,
    floor_tile,
    spec_of,
)

K = TypeVar("K")


def stream_views(definitions: Definitions) -> dict[str, list[StreamViewSpec]]:
    """Every applied version of every stream view, by source."""
    by_source: dict[str, list[StreamViewSpec]] = {}
    for key in sorted(definitions.views):
        view = definitions.views[key]
        if view.WhichOneof("source") == "stream_source":
            join_keys = join_keys_of(definitions.entities[view.entity])
            by_source.setdefault(view.stream_source.source, []).append(spec_of(view, join_keys))
    return by_source


def prunable_before(spec: StreamViewSpec, now_us: int) -> int:
    """Tiles starting before this can no longer be read online nor receive an event.

    A read at ``now`` reaches back at most the largest window (window_start); an event
    arriving now is accepted only if no older than the allowed lateness. One more tile
    of margin keeps a tile that straddles either edge.
    """
    reach = max(spec.max_window_us, spec.lateness_us) + spec.tile_us
    return floor_tile(now_us - reach, spec.tile_us)


def rollups_prunable_before(spec: StreamViewSpec, now_us: int) -> int:
    """``prunable_before`` for rollups: one rollup of margin instead of one tile."""
    reach = max(spec.max_window_us, spec.lateness_us) + spec.rollup_us
    return floor_tile(now_us - reach, spec.rollup_us)


def merged_states(locked: Mapping[K, str], events: Mapping[K, list[StreamEvent]]) -> dict[K, str]:
    """Each locked state with its new events merged in, encoded."""
    merged = {}
    for ref, new in events.items():
        state = decode_state(locked[ref])
        for event in new:
            state.add(event)
        merged[ref] = encode_state(state)
    return merged


def folded_states(
    locked: Mapping[tuple[str, int, str], str],
    view: str,
    version: int,
    taken: list[tuple[str, str]],
) -> dict[tuple[str, int, str], str]:
    """Each locked lifetime state with the pending states taken for its entity merged in."""
    merged: dict[tuple[str, int, str], TileState] = {}
    for entity, state in taken:
        ref = (view, version, entity)
        if ref not in merged:
            merged[ref] = decode_state(locked[ref])
        merged[ref].merge(decode_state(state))
    return {ref: encode_state(state) for ref, state in merged.items()}
