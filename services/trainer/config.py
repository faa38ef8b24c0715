"""The trainer's own settings (``LATHE_TRAINER_*``), beside the shared ``LatheSettings``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """How many jobs run at once, how long they may queue, where their files go."""

    model_config = SettingsConfigDict(env_prefix="LATHE_TRAINER_", extra="ignore")

    max_concurrent_jobs: int = Field(default=2, ge=1, description="Jobs training at once.")
    max_queued_jobs: int = Field(
        default=100, ge=1, description="Submits past this many queued jobs get UNAVAILABLE."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per job (a worker crash starts another)."
    )
    artifact_root: Path | None = Field(
        default=None,
        description="Datasets, checkpoints and exports (content-addressed); "
        "default $LATHE_HOME/trainer. Kubernetes workers need it on shared storage.",
    )
    poll_interval_s: float = Field(default=0.2, gt=0, description="Progress-file polling.")
    kill_timeout_s: float = Field(default=10.0, gt=0, description="Wait for killed workers.")
    code_revision: str = Field(
        default="", description="Recorded in lineage; default: `git rev-parse HEAD`."
    )
    kubernetes_namespace: str = Field(default="lathe", description="Where TrainJobs go.")
    kubernetes_image: str = Field(default="lathe", description="The worker image.")
    label_max_rows: int = Field(default=5_000_000, ge=1, description="Label rows per job.")
