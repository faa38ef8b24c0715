"""A deployment (one followed alias of one model) as a pure state machine.

``evolve`` folds a recorded event into the state; ``decide_news`` turns what the registry
says about the alias into the events to record (nothing when it is old news or changes
nothing); ``decide_outcome`` records how a load of the requested version ended, only
while that version is still the one requested. Every write goes through these inside one
transaction with the loaded stream version as the expected one (app/deployments.py).

News is ordered by the registry's alias time (the commit time of its move, which its
projection also reports as ``Alias.update_time``), so an alias event delivered after
reconciliation already applied a newer move cannot roll the deployment back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from google.protobuf.message import Message

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m


@dataclass(frozen=True)
class AliasNews:
    """What the registry says an alias points to now (version 0: deleted)."""

    model_name: str
    alias: str
    version: int
    """0 when the alias was deleted."""
    traffic_share: float
    alias_time: datetime
    """When the registry moved it."""
    source: str
    """``alias_event`` or ``reconcile``."""
    registry_event_id: str = ""


@dataclass(frozen=True)
class Failure:
    """The last refusal of a requested version."""

    version: int
    stage: str
    reason: str
    at: datetime | None


@dataclass(frozen=True)
class Deployment:
    """One alias's deployment, folded from its stream."""

    model_name: str
    alias: str
    stream_version: int = 0
    """Version of the last event folded in (0: never requested)."""
    request_revision: int = 0
    """Stream version of the last request or removal: what processes load against."""
    requested_version: int = 0
    traffic_share: float = 0.0
    alias_time: datetime | None = None
    removed: bool = False
    serving_version: int = 0
    """The version last reported activated (by any process)."""
    previous_version: int = 0
    runtime: int = m.RUNTIME_KIND_UNSPECIFIED
    failure: Failure | None = None

    @property
    def state(self) -> int:
        if self.removed:
            return m.DEPLOYMENT_STATE_REMOVED
        if self.failure is not None and self.failure.version == self.requested_version:
            return m.DEPLOYMENT_STATE_FAILED
        if self.serving_version == self.requested_version and self.requested_version:
            return m.DEPLOYMENT_STATE_SERVING
        return m.DEPLOYMENT_STATE_LOADING


def evolve(state: Deployment, message: Message, stream_version: int, at: datetime) -> Deployment:
    """``state`` after the event ``message`` (recorded as ``stream_version`` at ``at``)."""
    state = replace(state, stream_version=stream_version)
    if isinstance(message, ev.DeploymentRequested):
        return replace(
            state,
            request_revision=stream_version,
            requested_version=message.version,
            traffic_share=message.traffic_share,
            alias_time=message.alias_time.ToDatetime(tzinfo=at.tzinfo),
            removed=False,
        )
    if isinstance(message, ev.DeploymentRemoved):
        return replace(
            state,
            request_revision=stream_version,
            requested_version=0,
            traffic_share=0.0,
            alias_time=message.alias_time.ToDatetime(tzinfo=at.tzinfo),
            removed=True,
            previous_version=state.serving_version or state.previous_version,
            serving_version=0,
        )
    if isinstance(message, ev.DeploymentActivated):
        previous = state.serving_version if state.serving_version != message.version else 0
        return replace(
            state,
            serving_version=message.version,
            previous_version=previous or state.previous_version,
            runtime=message.runtime,
            failure=None,
        )
    if isinstance(message, ev.DeploymentFailed):
        return replace(state, failure=Failure(message.version, message.stage, message.reason, at))
    raise TypeError(f"not a deployment event: {type(message).__name__}")


def decide_news(state: Deployment, news: AliasNews) -> list[Message]:
    """The events that record ``news``: none when it is older than what is known or
    changes nothing."""
    if state.alias_time is not None and news.alias_time <= state.alias_time:
        return []
    if news.version == 0:
        if state.removed or state.stream_version == 0:
            return []
        removed = ev.DeploymentRemoved(
            model_name=news.model_name,
            alias=news.alias,
            previous_version=state.requested_version,
            source=news.source,
            registry_event_id=news.registry_event_id,
        )
        removed.alias_time.FromDatetime(news.alias_time)
        return [removed]
    if (
        not state.removed
        and state.requested_version == news.version
        and state.traffic_share == news.traffic_share
    ):
        return []
    requested = ev.DeploymentRequested(
        model_name=news.model_name,
        alias=news.alias,
        version=news.version,
        traffic_share=news.traffic_share,
        source=news.source,
        registry_event_id=news.registry_event_id,
    )
    requested.alias_time.FromDatetime(news.alias_time)
    return [requested]


def decide_outcome(
    state: Deployment, revision: int, outcome: ev.DeploymentActivated | ev.DeploymentFailed
) -> list[Message]:
    """Record how loading request ``revision`` ended, unless the deployment moved on or
    another process already reported it."""
    if state.request_revision != revision or state.stream_version != revision:
        return []
    if outcome.version != state.requested_version:
        return []
    return [outcome]
