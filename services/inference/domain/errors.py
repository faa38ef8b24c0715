"""Failures more than one floor names: raised in ``store/``, answered in ``api/``.

They live here because ``api/`` may not import ``store/`` (docs/adr/0016); the class is
the same object wherever it is imported, so ``except`` clauses catch what they did.
"""

from __future__ import annotations


class FeatureDeadline(Exception):
    """The deadline passed while the feature store answered."""
