"""What this process serves: one slot per followed alias, swapped atomically.

A slot holds the current version and the previous one (kept loaded: moving the alias
back swaps it in at once, without a download). Predict reads ``slot.current`` once per
request — a single reference, replaced in one assignment after the new version is warm
and checked — so a request sees either the old version or the new one, never a mix,
and no request fails across a swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.inference.app.model import LoadedModel
from services.inference.domain.deployment import Failure
from services.inference.domain.parity import ParityResult

PRODUCTION = "production"
CANARY = "canary"
SHADOW = "shadow"


@dataclass
class Activation:
    """How the current version came to serve here."""

    at: datetime
    parity: ParityResult | None
    load_seconds: float


@dataclass(eq=False)
class Slot:
    """One alias of one model in this process."""

    model_name: str
    alias: str
    current: LoadedModel | None = None
    previous: LoadedModel | None = None
    traffic_share: float = 0.0
    requested_version: int = 0
    handled_revision: int = 0
    """The request revision this process has acted on (loaded, refused or removed)."""
    loading: bool = False
    removed: bool = False
    failure: Failure | None = None
    activation: Activation | None = None

    @property
    def warm(self) -> bool:
        return self.current is not None

    @property
    def refused(self) -> bool:
        """The version the alias asks for was refused (the previous one, if any, serves)."""
        return self.failure is not None and self.failure.version == self.requested_version


class ServingTable:
    """Every slot of this process, by (model, alias)."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str], Slot] = {}
        self.deployments_read = False
        """Set by the loader once it has read the deployments: before, an empty table
        says nothing about what this process must serve."""

    def slot(self, model_name: str, alias: str) -> Slot | None:
        return self._slots.get((model_name, alias))

    def ensure(self, model_name: str, alias: str) -> Slot:
        key = (model_name, alias)
        found = self._slots.get(key)
        if found is None:
            found = self._slots[key] = Slot(model_name, alias)
        return found

    def slots(self) -> list[Slot]:
        return [self._slots[key] for key in sorted(self._slots)]

    def aliases_of(self, model_name: str) -> list[str]:
        return sorted(a for (m, a), s in self._slots.items() if m == model_name and not s.removed)

    def health_by_part(self) -> dict[str, bool]:
        """Health names of what this process follows, each True once it serves: the model
        (its production deployment, what Predict uses by default) and ``<model>/<alias>``
        for every alias. Published as ``lathe.inference.v1.Inference/<part>``."""
        parts: dict[str, bool] = {}
        for slot in self._slots.values():
            if slot.removed:
                continue
            parts[f"{slot.model_name}/{slot.alias}"] = slot.warm
            if slot.alias == PRODUCTION:
                parts[slot.model_name] = slot.warm
        return parts

    def ready(self) -> bool:
        """The service's health: every production deployment it follows is warm."""
        return self.not_ready_because() is None

    def not_ready_because(self) -> str | None:
        """None when every production deployment this process follows is warm (or there
        is none), else which one is not and why: the service's readiness check, so a
        load balancer sends no traffic to a replica still loading its models."""
        if not self.deployments_read:
            return "the deployments to serve have not been read yet"
        cold = [
            slot
            for slot in self.slots()
            if slot.alias == PRODUCTION and not slot.removed and not slot.warm
        ]
        if not cold:
            return None
        first = cold[0]
        why = f"failed: {first.failure.reason}" if first.failure else "still loading"
        more = f" (and {len(cold) - 1} more)" if len(cold) > 1 else ""
        return f"production of {first.model_name!r} is not warm yet, {why}{more}"
