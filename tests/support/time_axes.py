"""Run the offline as-of computation on either of its time axes (as_of._TimeAxis).

The direct axis (event time - base) serves every realistic test dataset; the ranked one
only entities x time spans that overflow int64 keys. Tests that compare the offline
path with brute force run both, so the fallback is checked on the same cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.feature_store.domain.streaming import as_of

AXES = ("direct", "ranked")


@contextmanager
def time_axis(axis: str) -> Iterator[None]:
    """Within the block, compute_as_of uses ``axis`` ("direct" or "ranked")."""
    assert axis in AXES, axis
    with pytest.MonkeyPatch.context() as patch:
        if axis == "ranked":
            patch.setattr(as_of, "_MAX_KEY", 0)  # no span fits: always ranks
        yield
