"""Distributions over eligible actions, and the hash draw: exact, reproducible, as frequent
as their propensities say."""

from __future__ import annotations

import numpy as np
import pytest

from libs.decisioning.distribution import check_distribution, distribution, eligible_mask
from libs.decisioning.draw import draw, pick, unit_hash, unit_hashes
from libs.decisioning.spec import Action, Band, EpsilonGreedy, PolicySpec, PolicySpecError, Softmax

ACTIONS = tuple(Action(a) for a in ("decline", "small", "medium", "large"))
EXPLORATIONS = [
    EpsilonGreedy(0.0),
    EpsilonGreedy(0.2),
    EpsilonGreedy(1.0),
    Softmax(0.5),
    Softmax(0.1, 0.05),
    Softmax(2.0, 0.25),
    EpsilonGreedy(0.3, Band("margin", 0.0, 0.4)),
    Softmax(0.3, 0.02, Band("best", 0.5, np.inf)),
    Softmax(0.3, 0.02, Band("large", -np.inf, 0.0)),
]


def _spec(exploration: EpsilonGreedy | Softmax) -> PolicySpec:
    return PolicySpec("tiers", ACTIONS, exploration, "salt-1")


def _batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(rows, len(ACTIONS)))
    scores[: rows // 10, 1] = scores[: rows // 10, 2]  # ties
    eligible = rng.random((rows, len(ACTIONS))) < 0.7
    eligible[np.arange(rows), rng.integers(0, len(ACTIONS), rows)] = True
    return scores, eligible


@pytest.mark.parametrize("exploration", EXPLORATIONS)
def test_distributions_sum_to_one_over_eligible_actions_only(
    exploration: EpsilonGreedy | Softmax,
) -> None:
    spec = _spec(exploration)
    scores, eligible = _batch(5_000)
    p = distribution(spec, scores, eligible)
    assert np.abs(p.sum(axis=1) - 1.0).max() < 1e-12
    assert (p[~eligible] == 0).all()
    assert (p >= 0).all()
    check_distribution(p, eligible)
    if isinstance(exploration, Softmax) and exploration.band is None:
        assert p[eligible].min() >= exploration.floor - 1e-15
    # The best eligible action (ties: lowest column) is never less likely than another.
    best = np.argmax(np.where(eligible, scores, -np.inf), axis=1)
    assert (p[np.arange(len(p)), best][:, None] >= p - 1e-15).all()


def test_policies_tagged_the_first_way_keep_their_exact_propensities() -> None:
    # Versions registered with tags (policy.actions, policy.epsilon) before policy.json:
    # the best eligible action gets 1 - eps + eps/k, every other eligible one eps/k.
    spec = PolicySpec.from_tags("offers", {"policy.actions": "a,b,c,d", "policy.epsilon": "0.2"})
    assert spec is not None and PolicySpec.from_tags("offers", {}) is None
    scores, eligible = _batch(300, seed=3)
    p = distribution(spec, scores, eligible)
    for i in range(len(scores)):
        k = int(eligible[i].sum())
        best = int(np.argmax(np.where(eligible[i], scores[i], -np.inf)))
        expected = np.where(eligible[i], 0.2 / k, 0.0)
        expected[best] += 0.8
        assert p[i].tolist() == pytest.approx(expected.tolist(), abs=1e-12)


def test_a_band_explores_inside_it_and_exploits_outside() -> None:
    spec = _spec(EpsilonGreedy(0.4, Band("margin", 0.0, 0.1)))
    scores = np.array([[0.0, 1.0, 1.05, 0.2], [0.0, 1.0, 2.0, 0.2]])
    p = distribution(spec, scores)
    assert p[0].tolist() == pytest.approx([0.1, 0.1, 0.7, 0.1])  # margin 0.05: explores
    assert p[1].tolist() == [0.0, 0.0, 1.0, 0.0]  # margin 1.0: greedy


def test_distribution_errors_say_what_is_wrong() -> None:
    spec = _spec(Softmax(1.0))
    with pytest.raises(PolicySpecError, match=r"scores must be \[rows, 4\]"):
        distribution(spec, np.zeros((2, 3)))
    with pytest.raises(PolicySpecError, match="row 1 has no eligible action"):
        distribution(spec, np.zeros((2, 4)), np.array([[True] * 4, [False] * 4]))
    with pytest.raises(PolicySpecError, match="non-finite score for an eligible action"):
        distribution(spec, np.array([[0.0, np.nan, 0.0, 0.0]]))
    # A NaN score of an ineligible action is fine: it is never looked at.
    p = distribution(spec, np.array([[0.0, np.nan, 0.0, 0.0]]), np.array([True, False, True, True]))
    assert p[0, 1] == 0.0
    with pytest.raises(PolicySpecError, match=r"row 0 sum to 0.9.*not 1"):
        check_distribution(np.array([[0.5, 0.4, 0.0, 0.0]]))
    with pytest.raises(PolicySpecError, match="ineligible action in row 0"):
        check_distribution(np.array([[0.5, 0.5, 0.0, 0.0]]), np.array([[True, False, True, True]]))
    with pytest.raises(PolicySpecError, match="unknown action 'huge'"):
        eligible_mask(spec, [["small"], ["huge"]])
    mask = eligible_mask(spec, [["small", "large"], []])
    assert mask.tolist() == [[False, True, False, True], [True] * 4]


def test_the_draw_is_a_documented_hash_and_reproducible() -> None:
    import hashlib

    digest = hashlib.blake2b(b"lathe.policy.draw\x1esalt-1\x1edecision-42", digest_size=8)
    assert unit_hash("decision-42", "salt-1") == int.from_bytes(digest.digest(), "big") / 2**64
    ids = [f"decision-{i}" for i in range(1_000)]
    u = unit_hashes(ids, "salt-1")
    assert u.tolist() == [unit_hash(d, "salt-1") for d in ids]
    assert ((u >= 0) & (u < 1)).all()
    other = unit_hashes(ids, "salt-2")
    assert abs(np.corrcoef(u, other)[0, 1]) < 0.1  # a new salt: independent draws
    scores, eligible = _batch(1_000, seed=5)
    p = distribution(_spec(Softmax(0.5, 0.05)), scores, eligible)
    first = draw(p, ids, "salt-1")
    again = draw(p, ids, "salt-1")
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()
    assert (first[1] == p[np.arange(1_000), first[0]]).all()
    assert eligible[np.arange(1_000), first[0]].all()


def test_draws_match_their_propensities_in_frequency() -> None:
    rows = 40_000
    p = np.tile([0.1, 0.0, 0.35, 0.55], (rows, 1))
    actions, propensities = draw(p, [f"loan-{i}" for i in range(rows)], "freq")
    counts = np.bincount(actions, minlength=4)
    expected = p[0] * rows
    sd = np.sqrt(rows * p[0] * (1 - p[0]))
    assert counts[1] == 0  # a zero-probability action is never drawn
    assert (np.abs(counts - expected) <= 4 * sd + 1e-9).all(), (counts, expected)
    assert set(propensities.tolist()) == {0.1, 0.35, 0.55}


def test_rounding_never_draws_past_the_last_action() -> None:
    p = np.array([[0.1] * 10, [0.7, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    actions, propensities = pick(p, np.array([1 - 2**-53, 1 - 2**-53]))
    assert actions.tolist() == [9, 1]
    assert propensities.tolist() == [0.1, 0.3]
