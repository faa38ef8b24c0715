"""The model registry's events: message type -> subject ``lathe.model_registry.<tail>``."""

from lathe.model_registry.v1 import events_pb2
from libs.eventstore import EventCatalog, EventSpec

CATALOG = EventCatalog(
    [
        EventSpec(events_pb2.ModelCreated, aggregate="model", name="created"),
    ]
)


def model_stream(name: str) -> str:
    """The event stream of one model aggregate."""
    return f"model-{name}"
