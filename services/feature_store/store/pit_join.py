"""The bitemporal point-in-time join, in DuckDB (see docs/adr/0008-offline-engine.md).

For a label at time t a view's row counts only if it was true by then
(``event_time <= t``) AND already known then (``created_time <= t``); the latest
event time wins, ties by the latest created time; a winner older than t - ttl
gives nulls. It runs in one pass per view: a row becomes visible at
``visible_at = greatest(event_time, created_time)``; a running arg-max of
(event_time, created_time) over each entity's rows ordered by visible_at gives,
at every visible_at, exactly the row a query from that instant must return; an
ASOF join on visible_at then finds each label's instant. A visible row has
event_time <= t, so nothing else needs checking; the TTL nulls stale winners.

The running arg-max (the view's *timeline*) depends only on the view's log, so the
mirror materializes it when the log changes (``timeline_sql``) and a training-set
query is only the ASOF joins (``join_sql``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.feature_store.domain.training import ROW_NUMBER

_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789_:@")


def q(name: str) -> str:
    """Quote an identifier built from validated names (defence in depth)."""
    if not name or set(name) - _ALLOWED:
        raise ValueError(f"unexpected identifier {name!r}")
    return f'"{name}"'


def timeline_sql(log: str, features: Sequence[str]) -> str:
    """Every row of a view's log with, at its ``visible_at``, the row a query then sees."""
    packed = ", ".join(f"'{f}': {q(f)}" for f in ("event_time", *features))
    unpacked = ", ".join(f"cur.{q(f)} AS {q(f)}" for f in ("event_time", *features))
    return f"""
        SELECT entity_key, visible_at, {unpacked} FROM (
          SELECT entity_key, greatest(event_time, created_time) AS visible_at,
                 arg_max({{{packed}}}, {{'e': event_time, 'c': created_time}}) OVER (
                   PARTITION BY entity_key ORDER BY greatest(event_time, created_time)
                   RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cur
          FROM {q(log)})"""


@dataclass(frozen=True)
class JoinView:
    timeline: str
    """DuckDB table built by ``timeline_sql``."""
    join_key: str
    """The label column holding this view's entity key."""
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    """Result column names, one per feature (e.g. ``loan_terms:interest_rate``)."""
    ttl_us: int
    """0: values never expire."""


def join_sql(labels: str, label_columns: Sequence[str], views: Sequence[JoinView]) -> str:
    """Labels (their keys, times and ``ROW_NUMBER``) joined with every view, in label
    order."""
    select, joins = [f"l.{q(c)}" for c in label_columns], []
    for i, view in enumerate(views):
        fresh = (
            f"v{i}.event_time >= l.event_time - to_microseconds({int(view.ttl_us)})"
            if view.ttl_us
            else None
        )
        for feature, output in zip(view.features, view.outputs, strict=True):
            value = f"v{i}.{q(feature)}"
            select.append(
                f"CASE WHEN {fresh} THEN {value} END AS {q(output)}"
                if fresh
                else f"{value} AS {q(output)}"
            )
        joins.append(
            f"ASOF LEFT JOIN {q(view.timeline)} AS v{i} ON l.{q(view.join_key)} = v{i}.entity_key "
            f"AND l.event_time >= v{i}.visible_at"
        )
    return (
        f"SELECT {', '.join(select)}\nFROM {q(labels)} AS l\n"
        + "\n".join(joins)
        + f"\nORDER BY l.{q(ROW_NUMBER)}"
    )
