"""The registry of benchmark families, and what a family must provide.

Adding a family (e.g. the model registry's ResolveAlias, the feature store):
write ``bench/<family>.py`` with a parameters dataclass and an
``async def run(context, params) -> FamilyResult``, expose a ``FAMILY = Family(...)``
and add it to ``all_families()`` below. ``python -m bench <name>`` then runs it, and
``--set <name>.<field>=<value>`` overrides its parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.goals import GoalSpec
from bench.harness import BenchContext
from bench.results import FamilyResult


@dataclass(frozen=True)
class Family:
    """One benchmark family: a group of Lathe-vs-baseline comparisons run together."""

    name: str
    """Dotted, ``<area>.<what>``; selecting ``<area>`` runs all of the area's families."""
    summary: str
    params: type[Any]
    """A dataclass whose defaults are the full run's parameters."""
    run: Callable[[BenchContext, Any], Awaitable[FamilyResult]]
    quick: dict[str, Any] = field(default_factory=dict)
    """Parameter overrides for ``--quick`` (a smoke run that checks the harness works)."""
    goals: tuple[GoalSpec, ...] = ()
    """Every figure the issues asked this family for, with its baseline and goal
    (``bench/goals.py``); the report (``--report``) judges them, and lists a declared
    figure the family does not produce yet as not measured."""

    def make_params(self, *, quick: bool, overrides: dict[str, str]) -> Any:
        """The parameters for this run: defaults, then ``--quick``, then ``--set``."""
        params = self.params()
        if quick:
            params = dataclasses.replace(params, **self.quick)
        fields = {f.name: f for f in dataclasses.fields(params)}
        converted: dict[str, Any] = {}
        for name, text in overrides.items():
            if name not in fields:
                raise ValueError(
                    f"{self.name} has no parameter {name!r}; it has: {', '.join(sorted(fields))}"
                )
            converted[name] = _convert(text, type(getattr(params, name)))
        return dataclasses.replace(params, **converted)


def _convert(text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    return kind(text)


def all_families() -> tuple[Family, ...]:
    """Every registered family, in the order a full run executes them."""
    # Imported here so that ``--list`` and argument errors stay fast.
    from bench import (
        decisioning_decide,
        decisioning_ope,
        event_lag,
        eventstore_append,
        features_ingest,
        features_sequences,
        features_serving,
        features_windows,
        inference_serving,
        registry_serving,
        trainer_loop,
    )

    return (
        eventstore_append.FAMILY,
        event_lag.FAMILY,
        registry_serving.FAMILY,
        features_serving.FAMILY,
        features_windows.FAMILY,
        features_ingest.FAMILY,
        features_sequences.FAMILY,
        trainer_loop.FAMILY,
        inference_serving.FAMILY,
        decisioning_ope.FAMILY,
        decisioning_decide.FAMILY,
    )


def select(names: Iterable[str]) -> list[Family]:
    """Families matching ``names`` (exact names or area prefixes); all when empty."""
    families = all_families()
    wanted = list(names)
    if not wanted:
        return list(families)
    chosen: list[Family] = []
    for name in wanted:
        matches = [f for f in families if f.name == name or f.name.startswith(f"{name}.")]
        if not matches:
            known = ", ".join(f.name for f in families)
            raise ValueError(f"no benchmark family {name!r}; known: {known}")
        chosen.extend(f for f in matches if f not in chosen)
    return chosen
