"""The inference service's readiness: production deployments warm, or why not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from services.inference.app.model import LoadedModel
from services.inference.app.serving import ServingTable
from services.inference.domain.deployment import Failure

_LOADED = cast(LoadedModel, object())  # readiness only asks whether a version is loaded


def _read() -> ServingTable:
    """A table whose deployments the loader has read."""
    table = ServingTable()
    table.deployments_read = True
    return table


def test_no_deployment_is_ready_once_the_deployments_were_read() -> None:
    table = ServingTable()
    assert table.not_ready_because() == "the deployments to serve have not been read yet"
    table.deployments_read = True
    assert table.not_ready_because() is None


def test_a_cold_production_deployment_is_not_ready_until_it_is_warm() -> None:
    table = _read()
    table.ensure("credit", "canary")  # a cold canary never holds readiness back
    production = table.ensure("credit", "production")
    assert table.not_ready_because() == "production of 'credit' is not warm yet, still loading"
    production.current = _LOADED
    assert table.not_ready_because() is None
    assert table.ready()


def test_a_failed_load_says_why_and_counts_the_others() -> None:
    table = _read()
    for model in ("credit", "fraud"):
        table.ensure(model, "production")
    table.slot("credit", "production").failure = Failure(  # type: ignore[union-attr]
        version=3, stage="verify", reason="sha256 mismatch", at=datetime.now(UTC)
    )
    because = table.not_ready_because()
    assert because == (
        "production of 'credit' is not warm yet, failed: sha256 mismatch (and 1 more)"
    )
    table.slot("credit", "production").removed = True  # type: ignore[union-attr]
    assert table.not_ready_because() == "production of 'fraud' is not warm yet, still loading"


def test_each_model_and_alias_has_a_health_part_serving_once_warm() -> None:
    table = _read()
    production = table.ensure("credit", "production")
    table.ensure("credit", "canary")
    table.ensure("fraud", "shadow").current = _LOADED  # no production: no model-level part
    table.ensure("old", "production").removed = True
    assert table.health_by_part() == {
        "credit": False,
        "credit/production": False,
        "credit/canary": False,
        "fraud/shadow": True,
    }
    production.current = _LOADED
    assert table.health_by_part()["credit"] is True
    assert table.health_by_part()["credit/canary"] is False
