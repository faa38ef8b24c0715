"""Not a test: cProfile of Predict in process (feature store, registry, inference and the
client in one event loop). Run explicitly:
``PROFILE_ROWS=256 PYTHONPATH=gen/python:. .venv/bin/python -m pytest -q -s
tests/inference/profile_predict.py``
It prints the top functions by cumulative and own time over ``PROFILE_CALLS`` calls."""

from __future__ import annotations

import cProfile
import os
import pstats
import time
import uuid

import pytest

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    row,
    serving_version,
    set_alias,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_profile_predict(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    rows = int(os.environ.get("PROFILE_ROWS", "256"))
    calls = int(os.environ.get("PROFILE_CALLS", "200"))
    family = os.environ.get("PROFILE_FAMILY", "mlp")
    name = f"prof-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    version = await register(registry, credit, name, export(credit, family=family, seed=1))
    await set_alias(registry, name, "production", version)
    async with start_inference(name, log_sample_rate=0.01) as inference:

        async def ready() -> bool:
            return await serving_version(inference, name, "production") == version

        await eventually(ready, what="serves")
        request = rr.PredictRequest(
            model_name=name, rows=[row(credit.loan_ids[i % 400]) for i in range(rows)]
        )
        for _ in range(20):
            await inference.Predict(request)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        for _ in range(calls):
            await inference.Predict(request)
        profile.disable()
        wall = (time.perf_counter() - started) / calls
        print(
            f"\n{rows} rows, {family}: {wall * 1e6:.0f} us per call (profiled), "
            f"{rows / wall:.0f} rows/s"
        )
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(60)
