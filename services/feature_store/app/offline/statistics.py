"""GetFeatureStatistics: current online values of a view, and their drift from a snapshot."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import asyncpg
import numpy as np

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument, NotFound
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.domain.quality import histogram, psi, summarize
from services.feature_store.domain.values import is_list, to_python
from services.feature_store.store import online, quality

_NUMERIC = {m.VALUE_TYPE_INT64, m.VALUE_TYPE_FLOAT64}


def _number(value: object) -> float | None:
    """A numeric value as a float; a list by its length (ADR 0021)."""
    if value is None:
        return None
    return float(len(value)) if isinstance(value, list) else float(value)  # type: ignore[arg-type]


class StatisticsReader:
    def __init__(self, pool: asyncpg.Pool, cache: DefinitionsCache) -> None:
        self._pool = pool
        self._cache = cache

    async def statistics(self, view_name: str, snapshot_id: str) -> rr.GetFeatureStatisticsResponse:
        view = await self._cache.view(view_name)
        numeric = [
            (i, f) for i, f in enumerate(view.features) if f.type in _NUMERIC or is_list(f.type)
        ]
        rows = await online.view_rows(self._pool, view.name, view.version, datetime.now(UTC))
        columns: dict[str, list[float | None]] = {f.name: [] for _, f in numeric}
        for row in rows:
            values = m.FeatureRow.FromString(row).values
            for index, feature in numeric:
                value = to_python(values[index]) if index < len(values) else None
                columns[feature.name].append(_number(value))
        profiles = await self._profiles(snapshot_id) if snapshot_id else {}
        response = rr.GetFeatureStatisticsResponse(violations=await self._violations(view))
        for _, feature in numeric:
            values = columns[feature.name]
            summary = summarize(values)
            stats = response.features.add(
                feature=feature.name,
                count=summary.count,
                nulls=summary.nulls,
                mean=0.0 if math.isnan(summary.mean) else summary.mean,
                min=0.0 if math.isnan(summary.min) else summary.min,
                max=0.0 if math.isnan(summary.max) else summary.max,
            )
            reference = profiles.get(f"{view.name}:{feature.name}")
            if reference is not None and reference.counts:
                present = np.array([v for v in values if v is not None], dtype=float)
                drift = psi(list(reference.counts), histogram(present, list(reference.edges)))
                if not math.isnan(drift):
                    stats.psi = drift
        return response

    async def _profiles(self, snapshot_id: str) -> dict[str, events_pb2.FeatureProfile]:
        digest = snapshot_id.removeprefix("sha256:")
        if len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise InvalidArgument("snapshot_id must be 'sha256:' and 64 hex digits")
        payload = await quality.latest_event_payload(
            self._pool, f"dataset-{digest[:32]}", "lathe.feature_store.v1.DatasetSnapshotCreated"
        )
        if payload is None:
            raise NotFound(f"no training set snapshot {snapshot_id!r} was recorded")
        snapshot = events_pb2.DatasetSnapshotCreated.FromString(payload)
        return {p.feature: p for p in snapshot.profiles}

    async def _violations(self, view: m.FeatureView) -> int:
        total = 0
        for payload in await quality.event_payloads(self._pool, f"quality-{view.name}"):
            event = events_pb2.ExpectationViolations.FromString(payload)
            if event.version == view.version:
                total += sum(event.counts.values())
        return total
