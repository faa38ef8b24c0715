"""Canary by entity hash, shadow off the response path, prediction logs, online == offline."""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import UTC, datetime

import asyncpg
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import message_pb2 as m
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.preprocessing import PreprocessingSpec, transform
from libs.sdk.feature_store import FeatureStoreClient
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    inference_events,
    predict,
    register,
    row,
    serving_version,
    set_alias,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_canary_share_is_sticky_and_shadow_is_only_logged(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    db_pool: asyncpg.Pool,
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1, v2, v3 = [await register(registry, credit, name, export(credit, seed=s)) for s in (1, 2, 3)]
    await set_alias(registry, name, "production", v1)
    await set_alias(registry, name, "canary", v2, share=0.3)
    await set_alias(registry, name, "shadow", v3)
    async with start_inference(name) as inference:
        for alias, version in (("production", v1), ("canary", v2), ("shadow", v3)):
            await eventually(
                lambda a=alias, v=version: _is(inference, name, v, a), what=f"{alias} serves"
            )
        loans = credit.loan_ids[:400]
        first = await _arms(inference, name, loans)
        canary = sum(1 for arm, _ in first.values() if arm == m.ARM_CANARY)
        n, p = len(loans), 0.3
        assert abs(canary - n * p) <= 4 * math.sqrt(n * p * (1 - p)), canary
        assert {v for arm, v in first.values() if arm == m.ARM_CANARY} == {v2}
        assert {v for arm, v in first.values() if arm == m.ARM_PRIMARY} == {v1}
        assert await _arms(inference, name, loans) == first  # sticky per entity
        # The shadow never answers; it is logged for every sampled decision.
        decision = f"d-{uuid.uuid4().hex}"
        answer = await predict(inference, name, [row(loans[0], decision_id=decision)])
        assert answer.predictions[0].model_version in (v1, v2)

        async def shadow_logged() -> bool:
            logs = await inference_events(db_pool, "PredictionLogged")
            return any(e.decision_id == decision and e.arm == m.ARM_SHADOW for e in logs)

        await eventually(shadow_logged, what="shadow log written")
        logs = [
            e
            for e in await inference_events(db_pool, "PredictionLogged")
            if e.decision_id == decision
        ]
        served = next(e for e in logs if e.arm != m.ARM_SHADOW)
        shadow = next(e for e in logs if e.arm == m.ARM_SHADOW)
        assert shadow.model_version == v3 and shadow.alias == "shadow"
        assert served.model_version == answer.predictions[0].model_version
        assert list(served.scores) == list(answer.predictions[0].scores)
        assert served.sample_rate == 1.0 and served.arm_share in (0.7, 0.3)
        assert list(served.feature_names) == list(credit.spec().feature_names)
        assert len(served.feature_values) == len(served.feature_names) and served.features_sha256
        assert served.trace_id == answer.trace_id and served.entity_keys["loan_id"].string_value


async def test_a_shadow_never_fails_production_whatever_features_it_reads(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    db_pool: asyncpg.Pool,
) -> None:
    """A shadow reading a feature the store does not serve costs production nothing; one
    reading features production's call did not fetch gets them with a call of its own."""
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    fewer = _reading(credit, {credit.features[0]: None})
    v1 = await register(registry, fewer, name, export(fewer, seed=1))
    gone = _reading(credit, {credit.features[0]: "gone_view:income"})
    v2 = await register(registry, gone, name, export(gone, seed=2))
    v3 = await register(registry, credit, name, export(credit, seed=3))
    await set_alias(registry, name, "production", v1)
    await set_alias(registry, name, "shadow", v2)
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, v1, "production"), what="v1 serves")
        await eventually(lambda: _is(inference, name, v2, "shadow"), what="v2 shadows")
        answers = [await predict(inference, name, [row(loan)]) for loan in credit.loan_ids[:20]]
        assert {a.predictions[0].model_version for a in answers} == {v1}

        await set_alias(registry, name, "shadow", v3)
        await eventually(lambda: _is(inference, name, v3, "shadow"), what="v3 shadows")
        decision = f"d-{uuid.uuid4().hex}"
        await predict(inference, name, [row(credit.loan_ids[0], decision_id=decision)])

        async def shadow_log() -> object | None:
            logs = await inference_events(db_pool, "PredictionLogged")
            return next(
                (e for e in logs if e.decision_id == decision and e.arm == m.ARM_SHADOW), None
            )

        await eventually(shadow_log, what="v3's shadow log")
        logged = await shadow_log()
        # v3 reads credit.features[0], which production's call did not fetch.
        assert logged.model_version == v3  # type: ignore[attr-defined]
        assert list(logged.feature_names) == list(credit.features)  # type: ignore[attr-defined]
        values = logged.feature_values  # type: ignore[attr-defined]
        assert values[0].WhichOneof("kind") == "float64_value"


def _reading(credit: Credit, changes: dict[str, str | None]) -> Credit:
    """``credit``'s model reading other features: each of ``changes`` renamed (or dropped,
    for None), by name rather than through the feature service."""
    renamed = {f: changes.get(f, f) for f in credit.features}
    kept = {f: g for f, g in renamed.items() if g is not None}
    return dataclasses.replace(
        credit,
        feature_service="",
        features=tuple(kept.values()),
        categorical=tuple(kept[f] for f in credit.categorical if f in kept),
        train={g: credit.train[f] for f, g in kept.items()},
    )


async def test_online_score_equals_the_offline_score_of_the_same_entity(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    features: FeatureStoreStub,
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    files = export(credit, family="ft_transformer", seed=5)
    version = await register(registry, credit, name, files)
    await set_alias(registry, name, "production", version)
    loans = list(credit.loan_ids[10:20])
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, version), what="serves")
        online = await predict(inference, name, [row(loan, amount=9000.0) for loan in loans])
    labels = pd.DataFrame(
        {
            "loan_id": loans,
            "event_time": [pd.Timestamp(datetime.now(UTC))] * len(loans),
            "requested_amount": [9000.0] * len(loans),
        }
    )
    training = await FeatureStoreClient(features).get_historical_features(
        labels, credit.feature_service
    )
    spec = PreprocessingSpec.from_json(files[2])
    encoded = transform(spec, {n: training.dataframe[n].tolist() for n in spec.feature_names})
    session = ort.InferenceSession(files[0], providers=["CPUExecutionProvider"])
    (offline,) = session.run(
        ["probability"], {"numeric": encoded.numeric, "categorical": encoded.categorical}
    )
    scores = np.array([p.scores[0] for p in online.predictions])
    assert np.max(np.abs(scores - offline)) < 1e-5
    assert all(p.model_version == version for p in online.predictions)
    times = online.predictions[0].feature_event_times
    assert len(times) == len(online.feature_names) == len(spec.feature_names)


async def _arms(inference, name: str, loans) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    out: dict[str, tuple[int, int]] = {}
    for start in range(0, len(loans), 200):
        chunk = loans[start : start + 200]
        answer = await predict(inference, name, [row(loan) for loan in chunk])
        for loan, p in zip(chunk, answer.predictions, strict=True):
            out[loan] = (p.arm, p.model_version)
    return out


async def _is(inference, name: str, version: int, alias: str = "production") -> bool:  # type: ignore[no-untyped-def]
    return await serving_version(inference, name, alias) == version
