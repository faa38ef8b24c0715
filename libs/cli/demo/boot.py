"""Step: boot the platform (embedded Postgres + NATS unless URLs are configured), connect
the demo's clients, and start a downstream team's subscriber."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.cli.demo.context import ACTOR, Clients, DemoRun, Step
from libs.cli.demo.downstream import Downstream
from libs.cli.render import status_table
from libs.grpckit import open_channel
from libs.messaging import connect_nats
from libs.platform.runner import Platform
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.inference import InferenceClient
from libs.sdk.trainer import TrainerClient

# A demo wants to see its predictions downstream; `lathe up` by hand keeps 1%.
_DEMO_ENVIRONMENT = {"LATHE_INFERENCE_LOG_SAMPLE_RATE": "1.0"}


async def boot(run: DemoRun) -> None:
    for key, value in _DEMO_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    platform = Platform(run.settings)
    lines: list[str] = []
    with (
        run.progress("starting Postgres, NATS and four services", None) as bar,
        _quiet(logging.getLogger("libs.messaging")),  # NATS retried while it starts
    ):

        def progress(line: str) -> None:
            lines.append(line)
            bar.update(detail=line[:60])

        run.state = await platform.up(progress=progress)
    for line in lines:
        if "embedded" in line or "using" in line or "already up" in line:
            run.console.print(line)
    run.console.print(status_table(await platform.service_statuses(run.state)))

    s = run.settings
    channels = [
        open_channel(s.feature_store_addr),
        open_channel(s.model_registry_addr),
        open_channel(s.trainer_addr),
        open_channel(s.inference_addr),
    ]
    for channel in channels:
        run.cleanups.append(channel.close)
    features, registry, trainer, inference = channels
    metadata = [("lathe-actor", ACTOR)]
    run.clients = Clients(
        features=FeatureStoreClient(FeatureStoreStub(features), metadata=metadata),
        registry=ModelRegistryStub(registry),
        trainer=TrainerClient(TrainerStub(trainer), actor=ACTOR),
        inference=InferenceClient(InferenceStub(inference), timeout_s=5.0),
    )
    run.run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    run.model_name = f"credit-default-{run.run_id}"

    nats_client = await connect_nats(run.state.nats_url, name="lathe-demo-downstream")
    run.cleanups.append(nats_client.close)
    run.downstream = await Downstream.start(nats_client, run.state.namespace)
    run.cleanups.append(run.downstream.stop)
    *others, last = [f"[bold]{s}[/bold]" for s in run.downstream.subjects(run.state.namespace)]
    run.console.print(f"a downstream team subscribes to {', '.join(others)} and {last}")


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


STEP = Step("Boot the platform", boot)
