"""What the application needs from the outside world, as small interfaces (store/ implements)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

import pyarrow as pa

from libs.sdk.model_registry import ArtifactUpload, VersionSpec
from services.trainer.domain.spec import LabelQuery, Split
from services.trainer.store.feature_catalog import FeatureServiceInfo
from services.trainer.store.features import TrainingSet


class Catalog(Protocol):
    async def feature_service(self, name: str) -> FeatureServiceInfo | None: ...

    async def snapshot_version(
        self, snapshot_id: str, feature_service: str, since: datetime
    ) -> int: ...


class Features(Protocol):
    async def training_set(self, labels: pa.Table, feature_service: str) -> TrainingSet: ...


class Registry(Protocol):
    async def model_exists(self, name: str) -> bool: ...

    async def version_of_job(self, model_name: str, job_id: str) -> int: ...

    async def register(
        self, spec: VersionSpec, artifacts: Mapping[str, ArtifactUpload], *, job_id: str
    ) -> int: ...


class Labels(Protocol):
    async def read(
        self, query: LabelQuery, split: Split, join_keys: tuple[str, ...]
    ) -> pa.Table: ...
