"""The inference service as the host runs it: contract, events, tables and wiring.

``Predict``'s path, by folder: ``api/servicer.py`` (validate) -> ``app/predict.py``
(route, one feature call) -> ``batching/batcher.py`` (one executor per core) ->
``app/model.py`` (libs.preprocessing, then ``runtimes/``). What serves is decided by
``app/follower.py`` (registry alias events, ResolveAlias at start) -> ``app/deployments.py``
(the deployment aggregate) -> ``app/loader.py`` + ``app/loading.py`` in every process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lathe.inference.v1 import service_pb2, service_pb2_grpc
from libs.config import ServiceName
from libs.db import load_migrations
from libs.eventstore import ConsumerSpec, DurableConsumer
from libs.messaging import EventStreamNames
from libs.runtime import ServiceComponents, ServiceContext, ServiceSpec
from services.inference.api.servicer import InferenceServicer
from services.inference.app.decision_log import DecisionLog
from services.inference.app.deployments import DeploymentRecorder
from services.inference.app.follower import AliasFollower
from services.inference.app.loader import DeploymentLoader
from services.inference.app.metrics import InferenceInstance
from services.inference.app.metrics import watch as watch_metrics
from services.inference.app.predict import Predictor
from services.inference.app.prediction_log import PredictionLogger
from services.inference.app.rewards import RewardJoiner, run_outcome_consumer
from services.inference.app.serving import ServingTable
from services.inference.batching import Batcher
from services.inference.config import InferenceSettings
from services.inference.events import CATALOG, REGISTRY_ALIAS_EVENTS
from services.inference.runtimes.build import RuntimeSettings
from services.inference.runtimes.keys import BatchProfile
from services.inference.runtimes.selection import parse_preference
from services.inference.store.engines import RegistryEngineCache
from services.inference.store.features import OnlineFeatures
from services.inference.store.registry import RegistryGateway

CONSUMER = "inference-deployments"


def build_spec(inference: InferenceSettings | None = None) -> ServiceSpec:
    """The service's spec; tests pass their own ``InferenceSettings``."""

    def build(context: ServiceContext) -> ServiceComponents:
        settings = inference or InferenceSettings()
        lathe = context.settings
        token = lathe.auth_token.get_secret_value() if lathe.auth_token else ""
        registry = RegistryGateway(lathe.service_addr(ServiceName.MODEL_REGISTRY), token)
        features = OnlineFeatures(
            lathe.service_addr(ServiceName.FEATURE_STORE),
            max_in_flight=settings.feature_calls_in_flight if settings.batching else 0,
            max_rows_per_call=max(settings.max_batch_rows, settings.max_request_rows),
        )
        table = ServingTable()
        batcher = Batcher(
            executors=settings.executor_count(),
            max_batch_rows=settings.max_batch_rows,
            max_queued_rows=max(settings.max_queued_rows, settings.max_request_rows),
            max_wait_s=settings.max_wait_s,
            batching=settings.batching,
            inline_below_s=settings.inline_below_s,
        )
        logger = PredictionLogger(
            context.store,
            sample_rate=settings.log_sample_rate,
            capacity=settings.log_buffer,
            max_request_rows=settings.log_buffer_request_rows,
        )
        recorder = DeploymentRecorder(context.store)
        follower = AliasFollower(
            recorder,
            registry,
            context.pool,
            aliases=settings.alias_set(),
            models=settings.model_set(),
        )
        registry_streams = EventStreamNames(lathe.namespace, ServiceName.MODEL_REGISTRY.value)
        consumer = DurableConsumer(
            ConsumerSpec(
                name=CONSUMER,
                stream=registry_streams.stream,
                filter_subject=registry_streams.subject("alias.*"),
                batch_size=16,
            ),
            js=context.js,
            store=context.store,
            handler=follower.handle,
            catalog=REGISTRY_ALIAS_EVENTS,
        )
        runtime = RuntimeSettings(
            threads=settings.runtime_threads,
            precision=settings.tensorrt_precision,
            profile=BatchProfile(1, min(64, settings.max_batch_rows), settings.max_batch_rows),
        )
        loader = DeploymentLoader(
            pool=context.pool,
            table_=table,
            recorder=recorder,
            registry=registry,
            follows=follower.follows,
            preference=parse_preference(settings.runtime_preference),
            runtime=runtime,
            poll_interval_s=settings.poll_interval_s,
            gpu_probe=settings.gpu_probe,
            engine_cache=lambda loop: RegistryEngineCache(registry, context.pool, loop),
        )
        predictor = Predictor(
            table, features, batcher, logger, decision_sample_rate=settings.decision_log_sample_rate
        )
        batcher.incoming = predictor.incoming  # type: ignore[assignment]
        joiner = RewardJoiner(
            context.store, settings.reward_window_map(), settings.default_reward_window_s
        )
        servicer = InferenceServicer(
            predictor,
            table,
            max_rows=settings.max_request_rows,
            decisions=DecisionLog(context.pool, joiner.window_s),
        )

        async def join_rewards(stop: asyncio.Event) -> None:
            await run_outcome_consumer(context, joiner, stop)

        async def close_clients(stop: asyncio.Event) -> None:
            await stop.wait()
            await registry.close()
            await features.close()

        return ServiceComponents(
            registrations=[
                lambda server: service_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
            ],
            background=[consumer.run, follower.run_reconcile, loader.run, join_rewards],
            serving_support=[batcher.run, logger.run, close_clients],
            closers=[watch_metrics(InferenceInstance(table, batcher, logger, features))],
            readiness=table.not_ready_because,
            part_health=table.health_by_part,
            # Predict scores loaded models and buffers its logs through a Postgres outage:
            # out of rotation, every replica at once, it would fail every call instead.
            ready_without_postgres=True,
        )

    return ServiceSpec(
        name=ServiceName.INFERENCE,
        services=(service_pb2.DESCRIPTOR.services_by_name["Inference"],),
        catalog=CATALOG,
        migrations=tuple(load_migrations("inference", Path(__file__).parent / "migrations")),
        build=build,
    )


SPEC = build_spec()
