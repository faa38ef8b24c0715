"""The feature store's events: message type -> subject ``lathe.feature_store.<tail>``."""

from lathe.feature_store.v1 import events_pb2
from libs.eventstore import EventCatalog, EventSpec

CATALOG = EventCatalog(
    [
        EventSpec(events_pb2.EntityDefined, aggregate="entity", name="defined"),
        EventSpec(events_pb2.FeatureViewDefined, aggregate="feature_view", name="defined"),
        EventSpec(
            events_pb2.OnDemandFeatureViewDefined, aggregate="on_demand_view", name="defined"
        ),
        EventSpec(events_pb2.FeatureServiceDefined, aggregate="feature_service", name="defined"),
        EventSpec(events_pb2.DefinitionDeleted, aggregate="definition", name="deleted"),
        EventSpec(events_pb2.DefinitionDeprecated, aggregate="definition", name="deprecated"),
        EventSpec(events_pb2.MaterializationStarted, aggregate="materialization", name="started"),
        EventSpec(
            events_pb2.MaterializationCompleted, aggregate="materialization", name="completed"
        ),
        EventSpec(events_pb2.StreamViewBackfilled, aggregate="stream_view", name="backfilled"),
        EventSpec(events_pb2.ExpectationViolations, aggregate="quality", name="violations"),
        EventSpec(events_pb2.DatasetSnapshotCreated, aggregate="dataset", name="snapshot_created"),
    ]
)


def definition_stream(kind: str, name: str) -> str:
    """One stream per definition: its versions in order."""
    return f"{kind}-{name}"
