"""The inference service, fuzzed serving real models: what it follows, and its valid calls.

Without a model that loads, every Predict and Decide stops at "not deployed" and the
fuzz never reaches the feature call, preprocessing, the batcher, the runtime or the
logger. So before fuzzing, this builds what ``tests/inference`` builds (its helpers, not
a copy): a credit feature service in the feature store, a trainer-shaped MLP predictor
and a policy (the legacy scorecard of ``policy_world``), both registered through the
real registry and promoted to production; it waits until both serve warm, then makes
valid Predict, Decide, ListDecisions, ListDeployments and GetDeployment calls as seeds
(1,024-row requests among them: ``max_request_rows``), and offers a real
``next_page_token`` and its edited forms for ``page_token``.

Writes made off the response path must be the call's own: the prediction logger writes
a call's logs after its reply (0.2 s later on its own), so after each inference call
``InferenceProbe.settled`` has it write them at once and waits for them, before the
write fingerprint is taken. And the registry's fuzz, run before inference's, may move
these models' aliases (their names are harvested like any other), so each inference
test first puts production back (``restore``) and waits for the service to settle.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as irr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import ServiceName
from libs.runtime import ServiceComponents, ServiceContext, ServiceSpec
from services.inference.app.prediction_log import PredictionLogger
from services.inference.config import InferenceSettings
from services.inference.service import build_spec
from tests.fuzz.descriptor_strategies import cursor_variants
from tests.fuzz.oracle import fingerprint
from tests.fuzz.platform import FuzzPlatform
from tests.inference.helpers import (
    create_model,
    eventually,
    export,
    make_credit,
    register,
    row,
    set_alias,
)
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy

INFERENCE = ServiceName.INFERENCE
PREDICTOR = "fuzz-credit"
"""An MLP scoring the credit feature service (Predict)."""
POLICY = "fuzz-line"
"""The legacy credit-line scorecard, epsilon-greedy over four actions (Decide)."""
MAX_REQUEST_ROWS = 1024
"""``InferenceSettings.max_request_rows``: the seeds' large requests are this long."""
LOG_SAMPLE_RATE = 0.05
"""Share of Predict's and Decide's rows logged (by a hash of the decision id)."""
REWARD = "margin"
SETTLE_TIMEOUT_S = 10.0


@dataclass
class InferenceProbe:
    """A handle on the hosted service's prediction logger (captured when it is built)."""

    logger: PredictionLogger | None = None
    offered: int = 0
    """Logs offered to it so far; each ends up written or dropped (its two counters)."""

    def watch(self, logger: PredictionLogger) -> None:
        """Count what ``logger`` is offered (its ``offer`` goes through ``offer_request``)."""
        offer_request = logger.offer_request

        def counted(sources: Any, traceparent: str, *, request_rows: int) -> bool:
            self.offered += len(sources)
            return offer_request(sources, traceparent, request_rows=request_rows)

        logger.offer_request = counted  # type: ignore[method-assign]
        self.logger = logger

    async def settled(self) -> None:
        """Once every log offered so far is written or dropped (the call's writes are in).

        ``pending`` alone would not do: a batch being built is in neither of the queues
        it counts."""
        logger = self.logger
        if logger is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        while logger.written + logger.dropped < self.offered and loop.time() < deadline:
            logger.flush_soon()
            await asyncio.sleep(0.002)


def fuzz_inference_spec() -> tuple[ServiceSpec, InferenceProbe]:
    """The inference service following only the fuzz's models, on the CPU."""
    settings = InferenceSettings(
        models=f"{PREDICTOR},{POLICY}",
        gpu_probe=False,
        poll_interval_s=0.05,
        # Logs of a few rows per call: enough to reach the logger on most calls, few
        # enough that the tables every call fingerprints stay small.
        log_sample_rate=LOG_SAMPLE_RATE,
        decision_log_sample_rate=LOG_SAMPLE_RATE,
        max_request_rows=MAX_REQUEST_ROWS,
    )
    spec = build_spec(settings)
    probe = InferenceProbe()

    def build(context: ServiceContext) -> ServiceComponents:
        components = spec.build(context)
        loggers = [
            getattr(task, "__self__", None)
            for task in components.serving_support
            if isinstance(getattr(task, "__self__", None), PredictionLogger)
        ]
        if len(loggers) != 1:
            raise AssertionError(
                "the inference service's serving_support no longer holds PredictionLogger.run; "
                "update tests/fuzz/inference_corpus.py to find its logger"
            )
        probe.watch(loggers[0])  # type: ignore[arg-type]
        return components

    return replace(spec, build=build), probe


# -- stubs for the tests/inference helpers, with the platform's bearer token -------------


def _with_token(details: Any, token: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        [*(details.metadata or ()), ("authorization", f"Bearer {token}")],
        details.credentials,
        details.wait_for_ready,
    )


# One interceptor per kind of call: a channel files each interceptor under one kind only.
class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _TokenStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), requests)


@dataclass(frozen=True)
class _Stubs:
    features: FeatureStoreStub
    registry: ModelRegistryStub
    inference: InferenceStub


@asynccontextmanager
async def _stubs(platform: FuzzPlatform) -> AsyncIterator[_Stubs]:
    channels = [
        grpc.aio.insecure_channel(
            platform.addresses[name],
            interceptors=[
                _TokenUnaryUnary(platform.token),
                _TokenUnaryStream(platform.token),
                _TokenStreamUnary(platform.token),
            ],
        )
        for name in (ServiceName.FEATURE_STORE, ServiceName.MODEL_REGISTRY, INFERENCE)
    ]
    try:
        features, registry, inference = channels
        yield _Stubs(
            FeatureStoreStub(features), ModelRegistryStub(registry), InferenceStub(inference)
        )
    finally:
        for channel in channels:
            await channel.close()


async def _serving(inference: InferenceStub, model: str, version: int) -> bool:
    try:
        reply = await inference.GetDeployment(
            irr.GetDeploymentRequest(model_name=model, alias="production"), timeout=5
        )
    except grpc.aio.AioRpcError:
        return False
    deployment = reply.deployment
    return deployment.serving_version == version and deployment.warm


# -- seeding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Deployed:
    model: str
    version: int


async def seed_inference(platform: FuzzPlatform) -> None:
    """Deploy a predictor and a policy, then seed valid calls to every inference RPC."""
    async with _stubs(platform) as stubs:
        credit = await make_credit(stubs.features, platform.pool, rows=64)
        deployed = []
        for name in (PREDICTOR, POLICY):
            await create_model(stubs.registry, name)
            if name == PREDICTOR:
                version = await register(stubs.registry, credit, name, export(credit))
            else:
                version = await register_policy(
                    stubs.registry, credit, name, legacy_onnx(credit), logging_spec(name)
                )
            await set_alias(stubs.registry, name, "production", version)
            deployed.append(_Deployed(name, version))
        for target in deployed:
            await eventually(
                lambda t=target: _serving(stubs.inference, t.model, t.version),  # type: ignore[misc]
                timeout_s=60,
                what=f"{target.model} v{target.version} serving warm",
            )
    platform.preparers[INFERENCE] = lambda: restore(platform, tuple(deployed))
    loans = credit.loan_ids
    decided_at = datetime.now(UTC)
    await _seed_decide(platform, loans)
    await _seed_predict(platform, loans)
    await _seed_deployments(platform)
    await _seed_list_decisions(platform, decided_at)


def _rows(loans: tuple[str, ...], count: int, ids: str = "") -> list[im.PredictionInput]:
    """``count`` rows over the loans (decision ids ``<ids>-<i>`` when ``ids`` is given)."""
    return [
        row(loans[i % len(loans)], 1000.0 + 37.0 * i, f"{ids}-{i}" if ids else "")
        for i in range(count)
    ]


async def _seed_predict(platform: FuzzPlatform, loans: tuple[str, ...]) -> None:
    seed = platform.seed
    await seed(
        INFERENCE,
        "Predict",
        irr.PredictRequest(model_name=PREDICTOR, rows=_rows(loans, 3, "fz-predict")),
    )
    await seed(
        INFERENCE,
        "Predict",
        irr.PredictRequest(model_name=PREDICTOR, rows=_rows(loans, MAX_REQUEST_ROWS)),
    )
    unknown = row("no-such-loan")
    # No rate stored for it: the on-demand view returns None without reading the amount.
    del unknown.request_features["requested_amount"]
    await seed(
        INFERENCE,
        "Predict",
        irr.PredictRequest(
            model_name=PREDICTOR,
            alias="production",
            rows=[unknown, *_rows(loans, 1)],
            disable_canary=True,
            allow_unknown_entities=True,
        ),
    )
    scored = _rows(loans, 2)
    scored[0].eligible_actions.extend(["decline", "line_50"])
    await seed(INFERENCE, "Predict", irr.PredictRequest(model_name=POLICY, rows=scored))


async def _seed_decide(platform: FuzzPlatform, loans: tuple[str, ...]) -> None:
    seed = platform.seed
    run = uuid.uuid4().hex[:6]
    few = _rows(loans, 4, f"fz-decide-{run}")
    few[0].eligible_actions.extend(["decline", "line_100"])
    await seed(INFERENCE, "Decide", irr.DecideRequest(model_name=POLICY, rows=few))
    await seed(
        INFERENCE,
        "Decide",
        irr.DecideRequest(model_name=POLICY, rows=_rows(loans, MAX_REQUEST_ROWS)),
    )
    await seed(
        INFERENCE,
        "Decide",
        irr.DecideRequest(
            model_name=POLICY,
            alias="production",
            rows=[row("no-such-loan"), *_rows(loans, 1, f"fz-unknown-{run}")],
            allow_unknown_entities=True,
            disable_canary=True,
        ),
    )


async def _seed_deployments(platform: FuzzPlatform) -> None:
    seed = platform.seed
    await seed(INFERENCE, "ListDeployments", irr.ListDeploymentsRequest())
    await seed(INFERENCE, "ListDeployments", irr.ListDeploymentsRequest(model_name=POLICY))
    await seed(
        INFERENCE,
        "GetDeployment",
        irr.GetDeploymentRequest(model_name=PREDICTOR, alias="production"),
    )
    await seed(INFERENCE, "GetDeployment", irr.GetDeploymentRequest(model_name=POLICY))


async def _seed_list_decisions(platform: FuzzPlatform, decided_at: datetime) -> None:
    """Pages of the decisions Decide logged, once they are past the listing horizon (2 s),
    with a real ``next_page_token`` sent back and offered (with edited forms) as a value."""
    first = irr.ListDecisionsRequest(
        model_name=POLICY,
        reward_definition=REWARD,
        reward_definition_version=1,
        page_size=2,
    )
    async with _stubs(platform) as stubs:

        async def listed() -> bool:
            page = await stubs.inference.ListDecisions(first, timeout=5)
            return bool(page.next_page_token)

        await eventually(listed, timeout_s=30, what="decisions past the listing horizon")
    seed = platform.seed
    (page,) = await seed(INFERENCE, "ListDecisions", first)
    token = page.next_page_token  # type: ignore[attr-defined]
    following = irr.ListDecisionsRequest()
    following.CopyFrom(first)
    following.page_size = 100
    following.page_token = token
    await seed(INFERENCE, "ListDecisions", following)
    await seed(
        INFERENCE,
        "ListDecisions",
        irr.ListDecisionsRequest(
            model_name=POLICY,
            reward_definition=REWARD,
            reward_definition_version=3,
            start_time=_timestamp(decided_at - timedelta(minutes=1)),
            end_time=_timestamp(decided_at + timedelta(days=1)),
            page_size=1,
        ),
    )
    platform.plausible("page_token", *cursor_variants(token))


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# -- before each inference test ------------------------------------------------------------


async def restore(platform: FuzzPlatform, deployed: tuple[_Deployed, ...]) -> None:
    """Production serving the seeded versions again, and the service's tables at rest."""
    async with _stubs(platform) as stubs:
        for target in deployed:
            if await _serving(stubs.inference, target.model, target.version):
                continue
            await set_alias(stubs.registry, target.model, "production", target.version)
            await eventually(
                lambda t=target: _serving(stubs.inference, t.model, t.version),  # type: ignore[misc]
                timeout_s=60,
                what=f"{target.model} v{target.version} serving again",
            )
    await _at_rest(platform, INFERENCE.value)


async def _at_rest(platform: FuzzPlatform, schema: str, quiet_s: float = 0.3) -> None:
    """Wait until no table of ``schema`` changes for ``quiet_s`` (background work done),
    unless none changed since the fuzz's last call."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    before = await fingerprint(platform.pool, schema)
    if before == platform.at_rest.get(schema):
        return
    while loop.time() < deadline:
        await asyncio.sleep(quiet_s)
        after = await fingerprint(platform.pool, schema)
        if after == before:
            return
        before = after
