"""A stopping inference service answers the Predicts it holds before its parts stop.

Against the real registry, feature store, Postgres and NATS: 16 clients call Predict
without pause while the host is asked to stop. Every call that reached Predict must be
answered with scores: the batcher, the feature client and the logger stop only once
calls drained. Clients see nothing else than answers and the refusals of gRPC itself: a
call sent once the server stopped listening is UNAVAILABLE, and one that gRPC had
received but not yet handed to a handler when the stop began is CANCELLED (gRPC cancels
those; in a cluster the pod's preStop delay keeps traffic from reaching it by then).
"""

from __future__ import annotations

import asyncio
import collections
import uuid

import grpc
import pytest
from grpc import StatusCode

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.inference.app.predict import PredictCall, Predictor, PredictResult
from services.inference.config import InferenceSettings
from services.inference.service import build_spec
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
from tests.support.hosting import hosted

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_calls_in_flight_at_stop_are_answered(
    registry: ModelRegistryStub,
    credit: Credit,
    test_settings: LatheSettings,
    feature_store_host: ServiceHost,
    registry_host: ServiceHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"drain-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    await set_alias(registry, name, "production", v1)
    settings = InferenceSettings(
        models=name, log_sample_rate=1.0, gpu_probe=False, poll_interval_s=0.05
    )
    handled: collections.Counter[str] = collections.Counter()
    predict = Predictor.predict

    async def counted(self: Predictor, call: PredictCall) -> PredictResult:
        handled["reached"] += 1
        result = await predict(self, call)
        handled["answered"] += 1
        return result

    monkeypatch.setattr(Predictor, "predict", counted)
    outcomes: collections.Counter[StatusCode] = collections.Counter()
    answered_after_stop = 0
    stopping = asyncio.Event()
    graceful = test_settings.model_copy(update={"shutdown_grace_s": 5.0})
    async with hosted(build_spec(settings), graceful) as host:
        address = graceful.service_addr(ServiceName.INFERENCE)
        async with grpc.aio.insecure_channel(address) as channel:
            inference = InferenceStub(channel)
            await eventually(lambda: _serves(inference, name, v1), what=f"{name} v1 serves")

            async def client(k: int) -> None:
                nonlocal answered_after_stop
                i = 0
                while True:
                    i += 1
                    loan = credit.loan_ids[(k * 31 + i) % len(credit.loan_ids)]
                    request = rr.PredictRequest(model_name=name, rows=[row(loan)])
                    try:
                        await inference.Predict(request, timeout=10)
                    except grpc.aio.AioRpcError as error:
                        outcomes[error.code()] += 1
                        return  # refused: the server is stopping
                    outcomes[StatusCode.OK] += 1
                    answered_after_stop += stopping.is_set()

            clients = [asyncio.create_task(client(k)) for k in range(16)]
            await asyncio.sleep(1.0)
            stopping.set()
            host.request_stop()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=30)

    assert handled["reached"] == handled["answered"] == outcomes[StatusCode.OK], handled
    assert set(outcomes) <= {StatusCode.OK, StatusCode.UNAVAILABLE, StatusCode.CANCELLED}
    assert outcomes[StatusCode.OK] > 50, "too little load to tell"
    assert answered_after_stop > 0, "no call was in flight at the stop"


async def _serves(inference: InferenceStub, name: str, version: int) -> bool:
    return await serving_version(inference, name) == version
