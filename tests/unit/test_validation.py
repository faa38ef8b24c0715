"""Request validation helpers: each failure is InvalidArgument saying what to fix."""

from __future__ import annotations

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


def test_page_tokens_round_trip_and_foreign_tokens_are_rejected() -> None:
    token = validation.encode_page_token({"after": "model-b"})

    assert validation.decode_page_token(token) == {"after": "model-b"}
    assert validation.decode_page_token("") == {}
    for garbage in ("not-a-token", "W10=", "!!!"):
        with pytest.raises(InvalidArgument, match="next_page_token"):
            validation.decode_page_token(garbage)


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
