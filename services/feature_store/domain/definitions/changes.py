"""What applying a repository would change, definition by definition (pure logic)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.definitions.rules import (
    breaking_changes,
    check_service_references,
    validate_repository,
)
from services.feature_store.domain.keys import join_keys_of, key_types_of
from services.feature_store.domain.names import FeatureRef

D = TypeVar("D", bound=Message)


@dataclass
class Applied:
    """The latest applied version of every definition (deleted ones left out)."""

    entities: dict[str, m.Entity] = field(default_factory=dict)
    views: dict[str, m.FeatureView] = field(default_factory=dict)
    on_demand: dict[str, m.OnDemandFeatureView] = field(default_factory=dict)
    services: dict[str, m.FeatureService] = field(default_factory=dict)
    deleted: dict[tuple[str, str], int] = field(default_factory=dict)
    """(kind, name) -> the latest version deleted, for names deleted now (re-creating one
    needs a later version: the stores keep the deleted versions' values)."""

    def of(self, kind: str) -> dict[str, Message]:
        """The definitions of one kind ("feature_view", ...) by name."""
        return {  # type: ignore[return-value]
            "entity": self.entities,
            "feature_view": self.views,
            "on_demand_view": self.on_demand,
            "feature_service": self.services,
        }[kind]


DELETABLE = ("feature_view", "on_demand_view", "feature_service")
"""Kinds DeleteDefinition and DeprecateDefinition take (entities outlive their views)."""


def users_of(kind: str, name: str, applied: Applied) -> list[str]:
    """What would break if ``kind`` ``name`` were deleted: the feature services selecting
    it (their latest versions, the ones served) and on-demand views reading it."""
    if kind == "feature_service":
        return []
    users = []
    for service in applied.services.values():
        if any(FeatureRef.parse(text).view == name for text in service.features):
            users.append(f"feature service {service.name!r}")
    if kind == "feature_view":
        for on_demand in applied.on_demand.values():
            if any(FeatureRef.parse(text).view == name for text in on_demand.inputs):
                users.append(f"on-demand view {on_demand.name!r}")
    return sorted(users)


@dataclass(frozen=True)
class PlannedChange:
    change: m.DefinitionChange
    definition: Message
    """What to record if applied (None-equivalent for UNCHANGED / NOT_IN_REPOSITORY)."""

    @property
    def records(self) -> bool:
        return self.change.action in (
            m.CHANGE_ACTION_CREATE,
            m.CHANGE_ACTION_UPDATE,
            m.CHANGE_ACTION_NEW_VERSION,
        )


def plan(repository: m.FeatureRepository, applied: Applied) -> list[PlannedChange]:
    changes = [
        _entity_change(entity, applied.entities.get(entity.name)) for entity in repository.entities
    ]
    changes += _versioned(
        "feature_view", repository.feature_views, applied.views, _view_breaks, applied.deleted
    )
    changes += _versioned(
        "on_demand_view",
        repository.on_demand_views,
        applied.on_demand,
        _logic_breaks,
        applied.deleted,
    )
    changes += _versioned(
        "feature_service",
        repository.feature_services,
        applied.services,
        _service_breaks,
        applied.deleted,
    )
    declared = {
        "entity": {e.name for e in repository.entities},
        "feature_view": {v.name for v in repository.feature_views},
        "on_demand_view": {v.name for v in repository.on_demand_views},
        "feature_service": {s.name for s in repository.feature_services},
    }
    existing = {
        "entity": applied.entities,
        "feature_view": applied.views,
        "on_demand_view": applied.on_demand,
        "feature_service": applied.services,
    }
    for kind, definitions in existing.items():
        for name in sorted(set(definitions) - declared[kind]):
            version = getattr(definitions[name], "version", 0)
            change = m.DefinitionChange(
                kind=kind,
                name=name,
                action=m.CHANGE_ACTION_NOT_IN_REPOSITORY,
                from_version=version,
                to_version=version,
                details=["applied before but not in this repository; kept as it is"],
            )
            changes.append(PlannedChange(change, definitions[name]))
    return changes


def _entity_change(entity: m.Entity, old: m.Entity | None) -> PlannedChange:
    change = m.DefinitionChange(kind="entity", name=entity.name)
    if old is None:
        change.action = m.CHANGE_ACTION_CREATE
    elif old == entity:
        change.action = m.CHANGE_ACTION_UNCHANGED
    elif _keys(old) != _keys(entity):
        change.action = m.CHANGE_ACTION_UPDATE
        change.blocked = True
        change.details.append(
            f"join keys {_shown(old)} -> {_shown(entity)} (breaking): an entity's join keys "
            "and their types never change (stored keys depend on them): define a new entity "
            "instead, and new versions of its views"
        )
    else:
        change.action = m.CHANGE_ACTION_UPDATE
        change.details.append("description")
    return PlannedChange(change, entity)


def _keys(entity: m.Entity) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """What an entity's stored keys depend on: its join keys and their types, in order."""
    return join_keys_of(entity), key_types_of(entity)


def _shown(entity: m.Entity) -> str:
    names, types = _keys(entity)
    return (
        "("
        + ", ".join(
            f"{name} {m.ValueType.Name(t).removeprefix('VALUE_TYPE_').lower()}"
            for name, t in zip(names, types, strict=True)
        )
        + ")"
    )


def _versioned(
    kind: str,
    definitions: list[D],
    applied: dict[str, D],
    breaks: Callable[[D, D], list[str]],
    deleted: dict[tuple[str, str], int],
) -> list[PlannedChange]:
    planned = []
    for definition in definitions:
        name, version = definition.name, definition.version  # type: ignore[attr-defined]
        old = applied.get(name)
        change = m.DefinitionChange(kind=kind, name=name, to_version=version)
        gone = deleted.get((kind, name))
        if old is None and gone is not None and version <= gone:
            change.action = m.CHANGE_ACTION_CREATE
            change.blocked = True
            change.details.append(
                f"{kind} {name!r} was deleted at version {gone}: re-create it as version "
                f"{gone + 1} or later (the stores keep what versions up to {gone} hold)"
            )
        elif old is None:
            change.action = m.CHANGE_ACTION_CREATE
        else:
            current = old.version  # type: ignore[attr-defined]
            change.from_version = current
            if version == current + 1:
                change.action = m.CHANGE_ACTION_NEW_VERSION
            elif version == current:
                reasons = breaks(old, definition)
                if old == definition:
                    change.action = m.CHANGE_ACTION_UNCHANGED
                elif reasons:
                    change.action = m.CHANGE_ACTION_UPDATE
                    change.blocked = True
                    change.details.extend(
                        f"{r} (breaking: set version={current + 1})" for r in reasons
                    )
                else:
                    change.action = m.CHANGE_ACTION_UPDATE
                    change.details.append("compatible change within the version")
            else:
                change.action = m.CHANGE_ACTION_NEW_VERSION
                change.blocked = True
                change.details.append(
                    f"version {version} does not follow the applied version {current}: "
                    f"edit version {current} compatibly or declare version {current + 1}"
                )
        planned.append(PlannedChange(change, definition))
    return planned


def _view_breaks(old: m.FeatureView, new: m.FeatureView) -> list[str]:
    return breaking_changes(old, new)


def _logic_breaks(old: m.OnDemandFeatureView, new: m.OnDemandFeatureView) -> list[str]:
    """Any change to what an on-demand view computes changes its values."""
    reasons = []
    if (old.source_code, old.function_name) != (new.source_code, new.function_name):
        reasons.append("function changed")
    if list(old.inputs) != list(new.inputs) or list(old.request_fields) != list(new.request_fields):
        reasons.append("inputs changed")
    if list(old.features) != list(new.features):
        reasons.append("features changed")
    return reasons


def _service_breaks(old: m.FeatureService, new: m.FeatureService) -> list[str]:
    """A model consumes a fixed feature set: changing it is a new version."""
    return ["features changed"] if list(old.features) != list(new.features) else []


def checked_plan(repository: m.FeatureRepository, applied: Applied) -> list[PlannedChange]:
    """The repository checked (InvalidArgument naming what to fix) and planned against
    what is applied."""
    checked = validate_repository(repository, applied.entities.values())
    views = {**applied.views, **{v.name: v for v in checked.feature_views}}
    on_demand = {**applied.on_demand, **{v.name: v for v in checked.on_demand_views}}
    for service in checked.feature_services:
        check_service_references(service, views, on_demand)
    return plan(checked, applied)
