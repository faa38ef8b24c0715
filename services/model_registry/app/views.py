"""Read-side value types of the registry (what queries return)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ModelView:
    """A registered model as its projection holds it."""

    name: str
    description: str
    owner: str
    tags: dict[str, str]
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class ModelPage:
    models: list[ModelView]
    next_cursor: str | None = None
    """The last name on this page when more follow."""


@dataclass(frozen=True)
class ModelFilter:
    owner: str = ""
    tag_key: str = ""
    after_name: str = ""
    limit: int = 100
