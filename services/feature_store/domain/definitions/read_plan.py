"""How to serve a feature selection, worked out once per definitions generation.

A selection (a feature service, or a list of references) becomes a ReadPlan:
which view versions to read, where each requested feature sits in their rows,
and which on-demand functions to run on top. Plans are cached, so a request
does no definition parsing at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument, NotFound
from services.feature_store.domain.definitions.rules import seconds
from services.feature_store.domain.keys import join_keys_of, key_column
from services.feature_store.domain.names import FeatureRef
from services.feature_store.domain.on_demand.runner import OnDemandFunction, compile_on_demand


@dataclass(frozen=True)
class ViewRead:
    """One view version to read per entity row."""

    view: m.FeatureView
    join_keys: tuple[str, ...]
    """Its entity's join keys, in order (several: a composite key, ADR 0023)."""
    ttl_s: float
    """0: values never expire."""

    @cached_property
    def join_key(self) -> str:
        """The name its (encoded) entity key goes by: the join key, or for a composite key
        its names joined by ':' (``keys.key_column``)."""
        return key_column(self.join_keys)

    @property
    def key(self) -> tuple[str, int]:
        return self.view.name, self.view.version

    @property
    def stored(self) -> bool:
        """Its rows are stored (batch and push views); a stream view's are computed per read."""
        return self.view.WhichOneof("source") != "stream_source"


@dataclass(frozen=True)
class StoredColumn:
    view_index: int
    feature_index: int


@dataclass(frozen=True)
class OnDemandStep:
    view: m.OnDemandFeatureView
    function: OnDemandFunction
    inputs: list[tuple[str, StoredColumn]]
    """(reference as the function sees it, where its value is)."""


@dataclass(frozen=True)
class OnDemandColumn:
    step_index: int
    output: str
    type: int


@dataclass
class ReadPlan:
    feature_names: list[str] = field(default_factory=list)
    views: list[ViewRead] = field(default_factory=list)
    columns: list[StoredColumn | OnDemandColumn] = field(default_factory=list)
    steps: list[OnDemandStep] = field(default_factory=list)
    request_fields: dict[str, int] = field(default_factory=dict)
    """Request-data fields the on-demand steps read, with their types."""
    memo: dict[str, object] = field(default_factory=dict, compare=False, repr=False)
    """What readers derive from the plan, computed on first use (e.g. the online reply's
    constant parts), living as long as the cached plan."""
    deprecations: tuple[str, ...] = ()
    """One line per deprecated definition the selection reads ("feature_view pay: use
    pay_v2"): reads answer with them as warnings (ADR 0022)."""


@dataclass
class Definitions:
    """Every applied definition, every version, indexed for serving."""

    entities: dict[str, m.Entity] = field(default_factory=dict)
    views: dict[tuple[str, int], m.FeatureView] = field(default_factory=dict)
    latest_views: dict[str, int] = field(default_factory=dict)
    on_demand: dict[tuple[str, int], m.OnDemandFeatureView] = field(default_factory=dict)
    latest_on_demand: dict[str, int] = field(default_factory=dict)
    services: dict[str, m.FeatureService] = field(default_factory=dict)
    """Latest version of each feature service."""
    deprecated: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, name) -> why it is deprecated."""

    def view(self, name: str, version: int = 0) -> m.FeatureView:
        if name not in self.latest_views:
            raise NotFound(f"no feature view {name!r}; apply its definition first")
        found = self.views.get((name, version or self.latest_views[name]))
        if found is None:
            raise NotFound(f"feature view {name!r} has no version {version}")
        return found

    def plan_for_service(self, name: str) -> ReadPlan:
        service = self.services.get(name)
        if service is None:
            raise NotFound(f"no feature service {name!r}; apply its definition first")
        plan = self.plan_for_references(list(service.features))
        reason = self.deprecated.get(("feature_service", name))
        if reason is not None:
            plan.deprecations = (f"feature_service {name}: {reason}", *plan.deprecations)
        return plan

    def plan_for_references(self, references: list[str]) -> ReadPlan:
        if not references:
            raise InvalidArgument("select at least one feature (a feature service or references)")
        plan = ReadPlan()
        view_slots: dict[tuple[str, int], int] = {}

        def slot(view: m.FeatureView) -> int:
            key = (view.name, view.version)
            if key not in view_slots:
                entity = self.entities[view.entity]
                view_slots[key] = len(plan.views)
                plan.views.append(ViewRead(view, join_keys_of(entity), seconds(view.ttl)))
            return view_slots[key]

        def stored(ref: FeatureRef, view: m.FeatureView) -> StoredColumn:
            names = [f.name for f in view.features]
            if ref.feature not in names:
                raise InvalidArgument(f"feature view {view.name!r} has no feature {ref.feature!r}")
            return StoredColumn(slot(view), names.index(ref.feature))

        for text in references:
            ref = FeatureRef.parse(text)
            if ref.view in self.latest_on_demand:
                self._add_on_demand(plan, ref, stored)
                continue
            view = self.view(ref.view, ref.version)
            features = [f.name for f in view.features] if ref.feature == "*" else [ref.feature]
            for feature in features:
                plan.feature_names.append(f"{view.name}:{feature}")
                plan.columns.append(stored(FeatureRef(ref.view, feature, ref.version), view))
        _refuse_repeats(plan.feature_names, references)
        if self.deprecated:
            plan.deprecations = self._deprecations(plan)
        return plan

    def _deprecations(self, plan: ReadPlan) -> tuple[str, ...]:
        read = [("feature_view", r.view.name) for r in plan.views] + [
            ("on_demand_view", step.view.name) for step in plan.steps
        ]
        return tuple(
            f"{kind} {name}: {self.deprecated[(kind, name)]}"
            for kind, name in dict.fromkeys(read)
            if (kind, name) in self.deprecated
        )

    def _add_on_demand(self, plan: ReadPlan, ref: FeatureRef, stored) -> None:  # type: ignore[no-untyped-def]
        version = ref.version or self.latest_on_demand[ref.view]
        on_demand = self.on_demand.get((ref.view, version))
        if on_demand is None:
            raise NotFound(f"on-demand view {ref.view!r} has no version {version}")
        step_index = next(
            (i for i, s in enumerate(plan.steps) if s.view is on_demand), len(plan.steps)
        )
        if step_index == len(plan.steps):
            inputs = []
            for text in on_demand.inputs:
                input_ref = FeatureRef.parse(text)
                inputs.append(
                    (text, stored(input_ref, self.view(input_ref.view, input_ref.version)))
                )
            plan.steps.append(OnDemandStep(on_demand, compile_on_demand(on_demand), inputs))
            for request_field in on_demand.request_fields:
                plan.request_fields[request_field.name] = request_field.type
        outputs = {f.name: f.type for f in on_demand.features}
        wanted = list(outputs) if ref.feature == "*" else [ref.feature]
        for name in wanted:
            if name not in outputs:
                raise InvalidArgument(f"on-demand view {ref.view!r} has no feature {name!r}")
            plan.feature_names.append(f"{ref.view}:{name}")
            plan.columns.append(OnDemandColumn(step_index, name, outputs[name]))


def _refuse_repeats(feature_names: list[str], references: list[str]) -> None:
    """A feature selected twice would be two columns of one name in a training set."""
    seen: set[str] = set()
    for name in feature_names:
        if name in seen:
            raise InvalidArgument(
                f"feature {name!r} is selected more than once by {references}; "
                "list each feature once (a 'view:*' already selects all of the view's)"
            )
        seen.add(name)


def index_definitions(
    everything: dict[str, list],  # type: ignore[type-arg]
    deprecated: dict[tuple[str, str], str] | None = None,
) -> Definitions:
    definitions = Definitions(deprecated=dict(deprecated or {}))
    for entity in everything["entity"]:
        definitions.entities[entity.name] = entity
    for view in everything["feature_view"]:
        definitions.views[(view.name, view.version)] = view
        definitions.latest_views[view.name] = max(
            definitions.latest_views.get(view.name, 0), view.version
        )
    for on_demand in everything["on_demand_view"]:
        definitions.on_demand[(on_demand.name, on_demand.version)] = on_demand
        definitions.latest_on_demand[on_demand.name] = max(
            definitions.latest_on_demand.get(on_demand.name, 0), on_demand.version
        )
    for service in everything["feature_service"]:
        current = definitions.services.get(service.name)
        if current is None or current.version <= service.version:
            definitions.services[service.name] = service
    return definitions
