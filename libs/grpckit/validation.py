"""Request validation helpers: each raises InvalidArgument saying what to fix."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping

from libs.errors import InvalidArgument

NAME_PATTERN = r"^[a-z]([a-z0-9._-]{0,62}[a-z0-9])?$"
"""The resource-name rule written in the protos (models, feature views, ...)."""
_NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def require(value: str, field: str) -> str:
    """``value`` if non-empty (after stripping), else InvalidArgument naming ``field``."""
    if not value or not value.strip():
        raise InvalidArgument(f"{field} is required")
    return value


def resource_name(value: str, field: str) -> str:
    """Validate a resource name against ``NAME_PATTERN``."""
    require(value, field)
    if not _NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value!r} is not a valid name: use 1-64 characters of lowercase letters, "
            "digits, '.', '_' and '-', starting with a letter and ending with a letter or digit"
        )
    return value


def tags(values: Mapping[str, str], field: str = "tags") -> dict[str, str]:
    """Tag keys follow the name rule; values are free text of at most 256 characters."""
    for key, value in values.items():
        resource_name(key, f"{field} key")
        if len(value) > 256:
            raise InvalidArgument(f"{field}[{key!r}] is longer than 256 characters")
    return dict(values)


def finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value}")
    return value


def page_size(requested: int, field: str = "page_size") -> int:
    if requested < 0:
        raise InvalidArgument(f"{field} must not be negative, got {requested}")
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field} must be at most {MAX_PAGE_SIZE}, got {requested}")
    return requested or DEFAULT_PAGE_SIZE


def encode_page_token(cursor: Mapping[str, object]) -> str:
    """An opaque token for the next page; clients pass it back unchanged."""
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_page_token(token: str, field: str = "page_token") -> dict[str, object]:
    """The cursor inside ``token`` ({} for the first page)."""
    if not token:
        return {}
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        cursor = None
    if not isinstance(cursor, dict):
        raise InvalidArgument(
            f"{field} is not a token this service issued; pass next_page_token from the "
            "previous response unchanged, or leave it empty for the first page"
        )
    return cursor
