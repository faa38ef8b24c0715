"""The inference service's events, the registry events it follows, and their streams.

Subjects are ``lathe.inference.<aggregate>.<event>``. Streams: one per followed alias
(``deployment-<model>/<alias>``: requests, outcomes, removal) and one per flushed batch
of prediction logs (``predictions-<uuid>``, written once, so log writers never contend);
one per joined reward (``reward-<decision>/<definition>@<version>``, written once) and one
per batch of refused outcomes (``rewards-refused-<uuid>``).
"""

from lathe.inference.v1 import events_pb2
from lathe.model_registry.v1 import events_pb2 as registry_events
from libs.eventstore import EventCatalog, EventSpec

CATALOG = EventCatalog(
    [
        EventSpec(events_pb2.DeploymentRequested, aggregate="deployment", name="requested"),
        EventSpec(events_pb2.DeploymentActivated, aggregate="deployment", name="activated"),
        EventSpec(events_pb2.DeploymentFailed, aggregate="deployment", name="failed"),
        EventSpec(events_pb2.DeploymentRemoved, aggregate="deployment", name="removed"),
        EventSpec(events_pb2.PredictionLogged, aggregate="prediction", name="logged"),
        EventSpec(events_pb2.RewardJoined, aggregate="reward", name="joined"),
        EventSpec(events_pb2.RewardRefused, aggregate="reward", name="refused"),
    ]
)

REGISTRY_ALIAS_EVENTS = EventCatalog(
    [
        EventSpec(registry_events.AliasSet, aggregate="alias", name="set"),
        EventSpec(registry_events.AliasDeleted, aggregate="alias", name="deleted"),
    ]
)
"""The registry's published alias events, decoded with its published protos (the
registry's own code is another service's and never imported)."""


def deployment_stream(model_name: str, alias: str) -> str:
    """One alias of one model ('/' cannot occur in registry names)."""
    return f"deployment-{model_name}/{alias}"


def predictions_stream(batch_id: str) -> str:
    return f"predictions-{batch_id}"
