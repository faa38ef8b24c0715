"""The model registry's events and the streams they belong to.

Subjects are ``lathe.model_registry.<aggregate>.<event>``. Streams: one per model
(the model and its versions), one per alias (so aliases move independently and
an alias's history is one short stream), one per artifact blob.
"""

from lathe.model_registry.v1 import events_pb2
from libs.eventstore import EventCatalog, EventSpec

CATALOG = EventCatalog(
    [
        EventSpec(events_pb2.ModelCreated, aggregate="model", name="created"),
        EventSpec(events_pb2.PromotionPolicySet, aggregate="model", name="policy_set"),
        EventSpec(events_pb2.ModelVersionRegistered, aggregate="version", name="registered"),
        EventSpec(events_pb2.ModelVersionApproved, aggregate="version", name="approved"),
        EventSpec(events_pb2.AliasSet, aggregate="alias", name="set"),
        EventSpec(events_pb2.AliasDeleted, aggregate="alias", name="deleted"),
        EventSpec(
            events_pb2.ArtifactCorruptionDetected, aggregate="artifact", name="corruption_detected"
        ),
    ]
)


def model_stream(name: str) -> str:
    """The stream of one model: its creation, policy, versions and approvals."""
    return f"model-{name}"


def alias_stream(model_name: str, alias: str) -> str:
    """The stream of one alias of one model ('/' cannot occur in names)."""
    return f"alias-{model_name}/{alias}"


def artifact_stream(sha256: str) -> str:
    return f"artifact-{sha256}"
