"""Settings from the environment, with errors that say what to set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.config import LatheSettings, ServiceName
from libs.db import quote_ident
from libs.db.pool import DEFAULT_ACQUIRE_TIMEOUT_S, DEFAULT_COMMAND_TIMEOUT_S
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


def test_database_bounds_and_insecure_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LATHE_DB_COMMAND_TIMEOUT_S", "LATHE_DB_ACQUIRE_TIMEOUT_S", "LATHE_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    defaults = LatheSettings()
    assert defaults.db_command_timeout_s == 60.0
    assert defaults.db_acquire_timeout_s == 10.0
    assert defaults.insecure is False

    monkeypatch.setenv("LATHE_DB_COMMAND_TIMEOUT_S", "5")
    monkeypatch.setenv("LATHE_DB_ACQUIRE_TIMEOUT_S", "0")
    monkeypatch.setenv("LATHE_INSECURE", "1")
    settings = LatheSettings()
    assert settings.db_command_timeout_s == 5.0
    assert settings.db_acquire_timeout_s == 0.0
    assert settings.insecure is True

    monkeypatch.setenv("LATHE_DB_COMMAND_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError, match="db_command_timeout_s"):
        LatheSettings()


def test_the_pools_defaults_are_the_settings_defaults() -> None:
    """A pool opened without the settings (tests, bench, workers) is bounded as a service's."""
    fields = LatheSettings.model_fields
    assert fields["db_command_timeout_s"].default == DEFAULT_COMMAND_TIMEOUT_S
    assert fields["db_acquire_timeout_s"].default == DEFAULT_ACQUIRE_TIMEOUT_S


def test_relay_bounds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LATHE_RELAY_ACK_TIMEOUT_S", "LATHE_RELAY_STUCK_AFTER_S"):
        monkeypatch.delenv(name, raising=False)
    defaults = LatheSettings()
    assert (defaults.relay_ack_timeout_s, defaults.relay_stuck_after_s) == (5.0, 60.0)

    monkeypatch.setenv("LATHE_RELAY_ACK_TIMEOUT_S", "1.5")
    monkeypatch.setenv("LATHE_RELAY_STUCK_AFTER_S", "20")
    settings = LatheSettings()
    assert (settings.relay_ack_timeout_s, settings.relay_stuck_after_s) == (1.5, 20.0)

    monkeypatch.setenv("LATHE_RELAY_STUCK_AFTER_S", "1.5")  # no longer than one ack wait
    with pytest.raises(ValidationError, match=r"LATHE_RELAY_STUCK_AFTER_S \(1\.5\) must be longer"):
        LatheSettings()
    monkeypatch.setenv("LATHE_RELAY_ACK_TIMEOUT_S", "0")
    with pytest.raises(ValidationError, match="relay_ack_timeout_s"):
        LatheSettings()
