"""Names of feature-store definitions and references between them (pure logic)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from libs.errors import InvalidArgument

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)
_REFERENCE_RE = re.compile(r"^([a-z][a-z0-9_]{0,62})(?:@(\d+))?:(\*|[a-z][a-z0-9_]{0,62})$")


def check_name(name: str, what: str) -> str:
    """Names become SQL identifiers and subject tokens, so the rule is strict."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} {name!r} is not a valid name: use 1-63 characters of lowercase letters, "
            "digits and '_', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class FeatureRef:
    """``view:feature``, ``view:*`` or ``view@2:feature``."""

    view: str
    feature: str
    """A feature name, or ``*`` for all of the view's features."""
    version: int = 0
    """0: the latest version."""

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        match = _REFERENCE_RE.fullmatch(text)
        if match is None:
            raise InvalidArgument(
                f"feature reference {text!r} must look like 'view:feature', 'view:*' "
                "or 'view@2:feature'"
            )
        return cls(match.group(1), match.group(3), int(match.group(2) or 0))

    def __str__(self) -> str:
        version = f"@{self.version}" if self.version else ""
        return f"{self.view}{version}:{self.feature}"
