"""examples/predict_client.py picks the predictor activated last in production, not a policy
and not the name that sorts last, against real services."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from types import ModuleType

import pytest

from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    serving_version,
    set_alias,
)
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy
from tests.support.subprocesses import REPO_ROOT

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _example() -> ModuleType:
    path = REPO_ROOT / "examples" / "predict_client.py"
    spec = importlib.util.spec_from_file_location("predict_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_the_example_scores_with_the_predictor_activated_last(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    run = uuid.uuid4().hex[:8]
    # Promoted in this order: the newest predictor sorts first, the policy last and newest.
    older, newer, policy = f"credit-b-{run}", f"credit-a-{run}", f"credit-z-{run}"
    versions = {}
    for seed, name in enumerate((older, newer), start=7):
        await create_model(registry, name)
        versions[name] = await register(registry, credit, name, export(credit, seed=seed))
    await create_model(registry, policy)
    versions[policy] = await register_policy(
        registry, credit, policy, legacy_onnx(credit), logging_spec(policy)
    )
    async with start_inference(older, newer, policy) as stub:
        for name in (older, newer, policy):
            await set_alias(registry, name, "production", versions[name])
            await eventually(lambda n=name: _serves(stub, n, versions[n]), what=f"{name} serves")
        example = _example()
        assert await example.production_model(stub, registry) == newer
        # A new version of the older one: now it was activated last.
        again = await register(registry, credit, older, export(credit, seed=9))
        await set_alias(registry, older, "production", again)
        await eventually(lambda: _serves(stub, older, again), what=f"{older} v{again} serves")
        assert await example.production_model(stub, registry) == older


async def _serves(stub: InferenceStub, name: str, version: int) -> bool:
    return await serving_version(stub, name) == version
