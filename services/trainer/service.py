"""The trainer as the host runs it: its contract, events, tables and wiring."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

from lathe.trainer.v1 import service_pb2, service_pb2_grpc
from libs.config import ServiceName
from libs.db import load_migrations
from libs.eventstore import RequestLog
from libs.messaging import EventStreamNames
from libs.runtime import ServiceComponents, ServiceContext, ServiceSpec
from services.trainer.api.servicer import TrainerServicer
from services.trainer.app.cancel import Canceller
from services.trainer.app.queries import JobQueries
from services.trainer.app.runner import JobRunner
from services.trainer.app.submit import Submitter
from services.trainer.app.supervisor import Supervisor
from services.trainer.config import TrainerSettings
from services.trainer.domain.families import load_plugins
from services.trainer.events import CATALOG
from services.trainer.launch.kubernetes import KubernetesLauncher
from services.trainer.launch.local import LocalLauncher
from services.trainer.policies.jobs import PolicyJobs
from services.trainer.store.blobs import BlobStore
from services.trainer.store.feature_catalog import FeatureCatalog
from services.trainer.store.features import FeatureStoreGateway
from services.trainer.store.jobs import JobStore
from services.trainer.store.labels import LabelReader
from services.trainer.store.ownership import JobLocks
from services.trainer.store.registry import RegistryGateway

_REPO = Path(__file__).resolve().parents[2]


def build(context: ServiceContext) -> ServiceComponents:
    settings = TrainerSettings()
    load_plugins()
    shared = context.settings
    token = shared.auth_token.get_secret_value() if shared.auth_token else ""
    blobs = BlobStore(settings.artifact_root or shared.home / "trainer")
    jobs = JobStore(context.pool, context.store)
    requests = RequestLog(
        context.store, window=timedelta(seconds=context.settings.request_id_window_s)
    )
    catalog = FeatureCatalog(
        context.js, EventStreamNames(shared.namespace, ServiceName.FEATURE_STORE.value)
    )
    registry = RegistryGateway(shared.model_registry_addr, token)
    features = FeatureStoreGateway(shared.feature_store_addr)
    runner = JobRunner(
        jobs,
        blobs,
        features,
        catalog,
        registry,
        {
            "local": LocalLauncher(kill_timeout_s=settings.kill_timeout_s),
            "kubernetes": KubernetesLauncher(
                namespace=settings.kubernetes_namespace, image=settings.kubernetes_image
            ),
        },
        settings,
        owner=f"{socket.gethostname()}:{os.getpid()}",
    )
    supervisor = Supervisor(
        jobs,
        runner,
        JobLocks(shared.require_database_url()),
        max_concurrent=settings.max_concurrent_jobs,
    )
    submitter = Submitter(
        context.pool,
        jobs,
        blobs,
        catalog,
        registry,
        LabelReader(context.pool, settings.label_max_rows),
        requests,
        max_queued=settings.max_queued_jobs,
        code_revision=settings.code_revision or _git_revision(),
        on_queued=supervisor.wake,
    )
    canceller = Canceller(context.pool, jobs, requests, on_cancel=supervisor.cancel)
    policies = PolicyJobs(
        shared.model_registry_addr,
        shared.service_addr(ServiceName.INFERENCE),
        token,
        work_root=(settings.artifact_root or shared.home / "trainer") / "policy-jobs",
    )
    servicer = TrainerServicer(submitter, canceller, JobQueries(jobs), policies)
    return ServiceComponents(
        registrations=[
            lambda server: service_pb2_grpc.add_TrainerServicer_to_server(servicer, server)
        ],
        background=[supervisor.run, requests.run],
    )


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


SPEC = ServiceSpec(
    name=ServiceName.TRAINER,
    services=(service_pb2.DESCRIPTOR.services_by_name["Trainer"],),
    catalog=CATALOG,
    migrations=tuple(load_migrations("trainer", Path(__file__).parent / "migrations")),
    build=build,
)
