"""Drawing the action: a hash of the decision id, so every draw is reproducible and auditable.

``u = unit_hash(decision_id, salt)`` is the first 8 bytes of
``BLAKE2b(b"lathe.policy.draw" 0x1E salt 0x1E decision_id, digest_size=8)`` (UTF-8), read
as a big-endian unsigned integer and divided by 2**64: uniform in [0, 1). The action is
the inverse CDF of the row's distribution at ``u``: the first action whose cumulative
probability exceeds ``u``. Anyone holding the decision id, the policy's salt and the
scores can recompute the action (an audit), and the action is chosen with exactly the
logged probability. The ``lathe.policy.draw`` prefix keeps ``u`` independent of the other
hashes of the same decision id — in particular of the log-sampling hash
(``services/inference/domain/routing.py``), so the logged decisions are not a biased
sample of the actions drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from libs.decisioning.spec import PolicySpecError

_SCALE = float(2**64)
_PREFIX = b"lathe.policy.draw\x1e"


def unit_hash(decision_id: str, salt: str) -> float:
    """A uniform number in [0, 1) determined by ``decision_id`` and ``salt`` alone."""
    text = _PREFIX + salt.encode() + b"\x1e" + decision_id.encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def unit_hashes(decision_ids: Sequence[str], salt: str) -> np.ndarray:
    """``unit_hash`` of each id, as float64 (about 1 µs per id)."""
    head = _PREFIX + salt.encode() + b"\x1e"
    blake = hashlib.blake2b
    raw = b"".join(blake(head + d.encode(), digest_size=8).digest() for d in decision_ids)
    return np.frombuffer(raw, dtype=">u8").astype(np.float64) / _SCALE


def draw(
    probabilities: np.ndarray, decision_ids: Sequence[str], salt: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the drawn action's column and its probability (the propensity to log).

    ``probabilities`` is ``[rows, actions]`` (``distribution.distribution``'s output);
    one decision id per row.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if len(decision_ids) != len(p):
        raise PolicySpecError(f"{len(decision_ids)} decision ids for {len(p)} rows; give one each")
    return pick(p, unit_hashes(decision_ids, salt))


def pick(probabilities: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse CDF of each row at ``u`` (in [0, 1)): actions and their probabilities."""
    cumulative = np.cumsum(probabilities, axis=1)
    # The last action with positive probability closes the CDF at exactly 1, so rounding
    # in the sum can never leave u past the end (or land on a zero-probability action).
    columns = np.arange(probabilities.shape[1])
    last = np.where(probabilities > 0, columns, -1).max(axis=1)
    cumulative[columns[None, :] >= last[:, None]] = 1.0
    actions = (u[:, None] >= cumulative).sum(axis=1)
    return actions, probabilities[np.arange(len(actions)), actions]
