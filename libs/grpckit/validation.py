"""Request validation helpers: each raises InvalidArgument saying what to fix."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
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


PageCursor = Mapping[str, str | int]
"""What a page token carries: where the next page starts, e.g. {"after": "model-b"}."""

# A page token is base64url(digest || JSON [kind, cursor]). The digest (BLAKE2b keyed with
# a constant, so any replica, before or after a restart, checks any replica's token) makes
# edits and transmission damage evident; it is no secret-keyed signature, so it does not
# stop a determined forger: the typed check of the cursor is what keeps whatever a token
# holds from reaching a query as anything but the declared fields and types.
_TOKEN_KEY = b"lathe.page_token.v1"
_DIGEST_BYTES = 12
_MAX_TOKEN_CHARS = 4096  # ours are tens of characters; don't hash megabytes to say no
_INT64 = range(-(2**63), 2**63)


def encode_page_token(cursor: PageCursor, *, kind: str) -> str:
    """An opaque token for the next page of RPC ``kind``; clients pass it back unchanged.

    ``kind`` names the RPC (e.g. "model_registry.ListModels"): a token is only accepted
    by ``decode_page_token`` with the same kind.
    """
    body = json.dumps([kind, dict(cursor)], separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(_digest(body) + body).decode().rstrip("=")


def decode_page_token(
    token: str,
    *,
    kind: str,
    fields: Mapping[str, type[str] | type[int]],
    field: str = "page_token",
) -> dict[str, str | int]:
    """The cursor inside ``token`` ({} for the first page), checked against ``fields``.

    Anything but an unaltered token that ``encode_page_token`` made for ``kind`` with
    exactly ``fields`` (names and types) is InvalidArgument: an edited or truncated
    token, one of another RPC, valid base64 JSON of another shape.
    """
    if not token:
        return {}
    raw = _unbase64(token) if len(token) <= _MAX_TOKEN_CHARS else b""
    body = raw[_DIGEST_BYTES:]
    if len(raw) <= _DIGEST_BYTES or not hmac.compare_digest(raw[:_DIGEST_BYTES], _digest(body)):
        raise _foreign_token(field, kind, "it was altered, truncated or made elsewhere")
    try:
        token_kind, cursor = json.loads(body)
    except (ValueError, TypeError, RecursionError):  # not JSON, not a [kind, cursor] pair
        token_kind, cursor = None, None
    if token_kind != kind:
        issuer = token_kind if isinstance(token_kind, str) else "something else"
        raise _foreign_token(field, kind, f"it was issued by {issuer[:80]}")
    if not isinstance(cursor, dict) or set(cursor) != set(fields):
        raise _foreign_token(field, kind, "its cursor has other fields")
    for name, expected in fields.items():
        if not _is_cursor_value(cursor[name], expected):
            raise _foreign_token(field, kind, f"its cursor's {name!r} is not a {expected.__name__}")
    return cursor


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_DIGEST_BYTES, key=_TOKEN_KEY).digest()


def _unbase64(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return b""


def _is_cursor_value(value: object, expected: type[str] | type[int]) -> bool:
    if expected is int:
        return type(value) is int and value in _INT64
    return type(value) is str and "\x00" not in value


def _foreign_token(field: str, kind: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} is not a token this RPC ({kind}) issued: {why}. Pass next_page_token from "
        "the previous response unchanged, or leave it empty for the first page"
    )
