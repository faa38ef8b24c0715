"""Settings from the environment, with errors that say what to set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.config import LatheSettings, ServiceName
from libs.db import quote_ident
from libs.errors import InvalidArgument


def test_defaults_give_each_service_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LATHE_MODEL_REGISTRY_ADDR", "LATHE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = LatheSettings()

    assert settings.service_addr(ServiceName.MODEL_REGISTRY) == "127.0.0.1:50052"
    assert settings.service_addr(ServiceName.FEATURE_STORE).endswith(":50051")
    with pytest.raises(RuntimeError, match="LATHE_DATABASE_URL"):
        settings.require_database_url()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATHE_INFERENCE_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("LATHE_NAMESPACE", "t123")

    settings = LatheSettings()

    assert settings.service_addr(ServiceName.INFERENCE) == "0.0.0.0:6000"
    assert settings.namespace == "t123"


@pytest.mark.parametrize("namespace", ["Lathe", "a.b", "", "1x", "a" * 40])
def test_namespace_must_be_a_subject_token(monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    monkeypatch.setenv("LATHE_NAMESPACE", namespace)
    with pytest.raises(ValidationError, match="LATHE_NAMESPACE"):
        LatheSettings()


@pytest.mark.parametrize("name", ['x"; DROP SCHEMA y; --', "Model", "a-b", "", "1a"])
def test_sql_identifiers_are_validated_before_quoting(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid identifier"):
        quote_ident(name)
    assert quote_ident("model_registry") == '"model_registry"'
