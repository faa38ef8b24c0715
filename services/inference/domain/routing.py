"""Stable hashes that route and sample traffic.

A canary receives an entity when the entity's hash, salted with the model's name, falls
below the canary's share: the same entity always lands on the same arm (sticky) while
the share holds, and raising the share only moves entities from primary to canary.
Prediction logs are sampled by a hash of the decision id, never by anything the model
computed, so the logged decisions are an unbiased sample whose weight is 1 / rate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from lathe.feature_store.v1 import message_pb2 as fs

_SCALE = float(2**64)
_LOG_PREFIX = "log\x1e"
"""What the log-sampling hash puts before the decision id."""


def unit_hash(text: str) -> float:
    """A uniform number in [0, 1) determined by ``text`` alone (BLAKE2b, 64 bits)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def entity_text(keys: Mapping[str, fs.Value]) -> str:
    """A canonical text of an entity's keys: sorted by name, typed (``"1"`` != ``1``)."""
    parts = []
    for name in sorted(keys):
        value = keys[name]
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            parts.append(f"{name}=s:{value.string_value}")
        elif kind == "int64_value":
            parts.append(f"{name}=i:{value.int64_value}")
        else:
            parts.append(f"{name}=?:{value.SerializeToString(deterministic=True).hex()}")
    return "\x1f".join(parts)


def canary_bucket(model_name: str, keys: Mapping[str, fs.Value]) -> float:
    return unit_hash(f"canary\x1e{model_name}\x1e{entity_text(keys)}")


def goes_to_canary(model_name: str, keys: Mapping[str, fs.Value], share: float) -> bool:
    """True for the ``share`` of entities (sticky per entity) that the canary scores."""
    return share > 0.0 and canary_bucket(model_name, keys) < share


def sampled_rows(decision_ids: Sequence[str], rate: float) -> list[int]:
    """The indices of ``decision_ids`` that ``sampled`` picks at ``rate`` (the same
    hash, with the prefix's BLAKE2b state made once and copied per id)."""
    if rate <= 0.0:
        return []
    if rate >= 1.0:
        return list(range(len(decision_ids)))
    prefix = hashlib.blake2b(_LOG_PREFIX.encode(), digest_size=8)
    out = []
    for i, decision_id in enumerate(decision_ids):
        digest = prefix.copy()
        digest.update(decision_id.encode())
        if int.from_bytes(digest.digest(), "big") / _SCALE < rate:
            out.append(i)
    return out


def sampled(decision_id: str, rate: float) -> bool:
    """Whether the decision's prediction is logged (the same answer for every arm)."""
    return rate >= 1.0 or (rate > 0.0 and unit_hash(_LOG_PREFIX + decision_id) < rate)
