"""Settings shared by the services, the runner and the CLI.

Everything is read from the environment (prefix ``LATHE_``) so that a service
started by ``lathe up``, by Kubernetes or by hand is configured the same way.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


class ServiceName(StrEnum):
    """The four services; the value is also the Postgres schema and subject token."""

    FEATURE_STORE = "feature_store"
    MODEL_REGISTRY = "model_registry"
    TRAINER = "trainer"
    INFERENCE = "inference"

    @property
    def display_name(self) -> str:
        return self.value.replace("_", "-")


_DEFAULT_PORTS: dict[ServiceName, int] = {
    ServiceName.FEATURE_STORE: 50051,
    ServiceName.MODEL_REGISTRY: 50052,
    ServiceName.TRAINER: 50053,
    ServiceName.INFERENCE: 50054,
}


class LatheSettings(BaseSettings):
    """One Lathe process's configuration.

    Leave ``database_url`` / ``nats_url`` unset in development: ``lathe up`` then
    starts embedded Postgres and NATS under ``home`` and passes their URLs to the
    services it starts.
    """

    model_config = SettingsConfigDict(env_prefix="LATHE_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Postgres DSN, e.g. postgresql://postgres@127.0.0.1:5432/lathe"
    )
    nats_url: str | None = Field(default=None, description="NATS URL, e.g. nats://127.0.0.1:4222")
    home: Path = Field(
        default=Path(".lathe"),
        description="Local state: embedded servers, logs, traces, artifacts.",
    )
    namespace: str = Field(
        default="lathe",
        description="First subject token and stream-name prefix; tests use a unique one per run.",
    )
    auth_token: SecretStr | None = Field(
        default=None, description="When set, mutating RPCs need 'authorization: Bearer <token>'."
    )
    insecure: bool = Field(
        default=False,
        description="Serve a non-loopback address without LATHE_AUTH_TOKEN, i.e. let anyone "
        "who can reach it change state. Without it such a service refuses to start.",
    )
    artifact_root: Path | None = Field(
        default=None,
        description="Model registry blob store directory; default $LATHE_HOME/artifacts.",
    )
    feature_store_addr: str = f"127.0.0.1:{_DEFAULT_PORTS[ServiceName.FEATURE_STORE]}"
    model_registry_addr: str = f"127.0.0.1:{_DEFAULT_PORTS[ServiceName.MODEL_REGISTRY]}"
    trainer_addr: str = f"127.0.0.1:{_DEFAULT_PORTS[ServiceName.TRAINER]}"
    inference_addr: str = f"127.0.0.1:{_DEFAULT_PORTS[ServiceName.INFERENCE]}"
    metrics_port: int | None = Field(
        default=None, description="Prometheus /metrics port of this process; unset: none."
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface for /metrics; 0.0.0.0 in a cluster."
    )
    process_index: int = Field(
        default=0,
        ge=0,
        description="This process's index among one service's processes in a pod (set by "
        "the first, index 0, for the ones it starts; libs.runtime.processes).",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces recorded (1.0 in development; e.g. 0.01 under load). "
        "Calls that arrive with a sampled trace context are always recorded.",
    )
    duplicate_window_s: float = Field(
        default=120.0, gt=0, description="JetStream dedupe window for relayed events."
    )
    request_id_window_s: float = Field(
        default=86_400.0,
        ge=60,
        description="How long a mutation's client request id is honoured: a retry with the "
        "same id within it gets the first attempt's reply instead of applying again.",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream replicas of each event stream (3 in a cluster).",
    )
    relay_batch_size: int = Field(default=500, gt=0, le=10_000)
    relay_poll_interval_s: float = Field(
        default=1.0, gt=0, description="Relay polling fallback when no NOTIFY arrives."
    )
    relay_ack_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest the outbox relay waits for JetStream to acknowledge its oldest "
        "outstanding publish; past it the relay gives up its leadership, backs off and resumes "
        "after what the stream holds, in the same process (ADR 0013).",
    )
    relay_stuck_after_s: float = Field(
        default=60.0,
        gt=0,
        description="How long the relay may make no progress while Postgres and NATS both "
        "answer before liveness (lathe.liveness) turns NOT_SERVING, asking for a restart. "
        "Longer than LATHE_RELAY_ACK_TIMEOUT_S: a slow ack is not a stuck relay.",
    )
    feature_store_replica_max_rows: int = Field(
        default=2_000_000,
        ge=0,
        description="Online rows a feature-store replica holds in memory (~0.5 KB each) to "
        "serve GetOnlineFeatures without Postgres; past it (or 0) reads go to Postgres.",
    )
    feature_store_raw_event_retention_days: int = Field(
        default=0,
        ge=0,
        description="Days of raw stream events the feature store keeps (by arrival time) for "
        "backfills and point-in-time aggregates; 0: forever. Aggregates for training rows "
        "older than this come out empty.",
    )
    model_registry_blob_collection_interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="How often the registry deletes artifact blobs no version references "
        "(left by failed registrations) and crashed partial uploads; 0: never.",
    )
    model_registry_blob_grace_s: float = Field(
        default=86_400.0,
        ge=3600,
        description="Blobs and partial uploads written this recently are never collected: a "
        "registration may still be about to record the version that references them.",
    )
    model_registry_upload_lease_s: float = Field(
        default=60.0,
        ge=1,
        description="How long a registry process's upload lease lasts (renewed every third of "
        "it): the partial uploads of a process whose lease lapsed (it died) are deleted.",
    )
    shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="How long in-flight RPCs may drain on SIGTERM."
    )
    db_command_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="Longest a database statement may run when no request deadline bounds it "
        "sooner (background work, calls without a deadline); past it the connection is closed "
        "(its transaction rolls back) and an RPC answers UNAVAILABLE. 0: no bound.",
    )
    db_acquire_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="Longest wait for a pooled database connection when no request deadline "
        "bounds it sooner; past it an RPC answers UNAVAILABLE. 0: no bound.",
    )

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE_RE.fullmatch(value):
            raise ValueError(
                "LATHE_NAMESPACE must be 1-31 characters of lowercase letters, digits and '_', "
                f"starting with a letter; got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check_relay_bounds(self) -> LatheSettings:
        if self.relay_stuck_after_s <= self.relay_ack_timeout_s:
            raise ValueError(
                f"LATHE_RELAY_STUCK_AFTER_S ({self.relay_stuck_after_s:g}) must be longer than "
                f"LATHE_RELAY_ACK_TIMEOUT_S ({self.relay_ack_timeout_s:g}): a relay waiting out "
                "one slow ack would otherwise be declared stuck and restarted"
            )
        return self

    @property
    def artifact_dir(self) -> Path:
        """Where the model registry keeps content-addressed artifact blobs."""
        return self.artifact_root or self.home / "artifacts"

    @property
    def feature_store_mirror_path(self) -> Path:
        """The feature store's DuckDB copy of its offline logs: derived, safe to delete."""
        return self.home / "feature-store" / f"offline-mirror-{self.namespace}.duckdb"

    def service_addr(self, service: ServiceName) -> str:
        """The host:port a service listens on and clients dial."""
        return str(getattr(self, f"{service.value}_addr"))

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "LATHE_DATABASE_URL is not set. Start the platform with `lathe up` "
                "(which sets it), "
                "or export LATHE_DATABASE_URL=postgresql://user@host:port/db."
            )
        return self.database_url

    def require_nats_url(self) -> str:
        if not self.nats_url:
            raise RuntimeError(
                "LATHE_NATS_URL is not set. Start the platform with `lathe up` (which sets it), "
                "or export LATHE_NATS_URL=nats://host:4222."
            )
        return self.nats_url
