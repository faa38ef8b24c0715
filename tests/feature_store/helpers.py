"""Building feature-store requests in tests."""

from __future__ import annotations

import uuid

from libs.sdk.feature_store import from_value as python
from libs.sdk.feature_store import to_column as column

__all__ = ["column", "python", "suffix"]


def suffix() -> str:
    return uuid.uuid4().hex[:8]
