"""Request validation helpers: each failure is InvalidArgument saying what to fix."""

from __future__ import annotations

import base64
import json
import math

import pytest

from libs.errors import InvalidArgument
from libs.grpckit import validation


@pytest.mark.parametrize("name", ["a", "credit-risk", "fraud.v2", "x_1", "a" * 64])
def test_valid_names_pass(name: str) -> None:
    assert validation.resource_name(name, "name") == name


@pytest.mark.parametrize(
    "name",
    ["", " ", "Credit", "1abc", "abc-", "a" * 65, "a b", "a;drop table models", "é", "a/b"],
)
def test_invalid_names_are_rejected_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        validation.resource_name(name, "name")


def test_page_size_defaults_and_bounds() -> None:
    assert validation.page_size(0) == validation.DEFAULT_PAGE_SIZE
    assert validation.page_size(7) == 7
    with pytest.raises(InvalidArgument, match="at most"):
        validation.page_size(validation.MAX_PAGE_SIZE + 1)
    with pytest.raises(InvalidArgument, match="negative"):
        validation.page_size(-1)


LIST_MODELS = {"kind": "model_registry.ListModels", "fields": {"after": str}}
HISTORY = {"kind": "model_registry.GetModelHistory", "fields": {"after": int}}


def test_page_tokens_round_trip() -> None:
    token = validation.encode_page_token({"after": "model-b"}, kind="model_registry.ListModels")

    assert validation.decode_page_token(token, **LIST_MODELS) == {"after": "model-b"}
    assert validation.decode_page_token("", **LIST_MODELS) == {}
    position = validation.encode_page_token({"after": 2**63 - 1}, kind=HISTORY["kind"])
    assert validation.decode_page_token(position, **HISTORY) == {"after": 2**63 - 1}


def _plain(cursor: object) -> str:
    """A token as the kit made them before they carried a digest and a kind."""
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


def _flip(token: str, index: int) -> str:
    replacement = "A" if token[index] != "A" else "B"
    return token[:index] + replacement + token[index + 1 :]


GOOD = validation.encode_page_token({"after": "model-b"}, kind="model_registry.ListModels")


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("not-a-token", "altered"),
        ("!!!", "altered"),
        ("W10=", "altered"),
        (_plain({"after": "model-b"}), "altered"),  # valid base64 JSON, no digest
        (_plain({"after": 5}), "altered"),
        (_flip(GOOD, 3), "altered"),  # inside the digest
        (_flip(GOOD, len(GOOD) - 5), "altered"),  # inside the cursor
        (GOOD[:-4], "altered"),
        (GOOD + "A" * 10_000, "altered"),
        (
            validation.encode_page_token({"after": 7}, kind="model_registry.GetModelHistory"),
            "issued by model_registry.GetModelHistory",
        ),
        (
            validation.encode_page_token({"after": "b"}, kind="feature_store.ListFeatureViews"),
            "issued by feature_store.ListFeatureViews",
        ),
    ],
)
def test_edited_and_foreign_page_tokens_are_rejected(token: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match="not a token this RPC") as raised:
        validation.decode_page_token(token, **LIST_MODELS)
    assert why in str(raised.value)
    assert "next_page_token" in str(raised.value)


@pytest.mark.parametrize(
    "cursor",
    [
        {"after": "7"},  # a string where the RPC keeps a position
        {"after": True},  # bool is an int to Python, not to the cursor
        {"after": 7.0},
        {"after": None},
        {"after": 2**63},  # past int64: would fail in Postgres, not here
        {"before": 7},
        {"after": 7, "extra": 1},
        {},
    ],
)
def test_tokens_whose_cursor_has_other_fields_or_types_are_rejected(
    cursor: dict[str, object],
) -> None:
    # Even a token with a valid digest (say, forged with the public key) must declare
    # exactly the fields and types the RPC reads.
    token = validation.encode_page_token(cursor, kind=HISTORY["kind"])  # type: ignore[arg-type]

    with pytest.raises(InvalidArgument, match="not a token this RPC"):
        validation.decode_page_token(token, **HISTORY)


def test_text_cursors_cannot_carry_nul() -> None:
    token = validation.encode_page_token({"after": "a\x00"}, kind="model_registry.ListModels")
    with pytest.raises(InvalidArgument, match="not a str"):
        validation.decode_page_token(token, **LIST_MODELS)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(value: float) -> None:
    with pytest.raises(InvalidArgument, match="finite"):
        validation.finite(value, "metrics['auc']")


def test_tags_check_keys_and_value_length() -> None:
    assert validation.tags({"team": "uw"}) == {"team": "uw"}
    with pytest.raises(InvalidArgument, match="tags key"):
        validation.tags({"Bad Key": "x"})
    with pytest.raises(InvalidArgument, match="256"):
        validation.tags({"k": "v" * 257})
