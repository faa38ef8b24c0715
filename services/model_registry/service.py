"""The model registry as the host runs it: its contract, events, tables and wiring."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from lathe.model_registry.v1 import service_pb2, service_pb2_grpc
from libs.config import ServiceName
from libs.db import load_migrations
from libs.eventstore import RequestLog
from libs.runtime import BackgroundTask, ServiceComponents, ServiceContext, ServiceSpec
from services.model_registry.api.servicer import ModelRegistryServicer
from services.model_registry.app.alias_cache import AliasCache
from services.model_registry.app.blob_collection import OrphanBlobCollector
from services.model_registry.app.catalog import RegistryCatalog
from services.model_registry.app.commands import RegistryCommands
from services.model_registry.app.upload_lease import UploadLease
from services.model_registry.events import CATALOG
from services.model_registry.store.artifacts import LocalArtifactStore
from services.model_registry.store.queries import RegistryQueries
from services.model_registry.store.upload_leases import UploadLeases


def build(context: ServiceContext) -> ServiceComponents:
    queries = RegistryQueries(context.pool)
    owner = uuid.uuid4().hex  # this process, as the owner of its uploads in progress
    artifacts = LocalArtifactStore(context.settings.artifact_dir, owner=owner)
    upload_lease = UploadLease(
        artifacts,
        UploadLeases(context.pool),
        owner=owner,
        lease_s=context.settings.model_registry_upload_lease_s,
    )
    aliases = AliasCache(context.pool, queries.alias)
    requests = RequestLog(
        context.store, window=timedelta(seconds=context.settings.request_id_window_s)
    )
    servicer = ModelRegistryServicer(
        RegistryCommands(context.pool, context.store, queries, artifacts, requests, upload_lease),
        RegistryCatalog(queries),
        aliases,
    )
    background: list[BackgroundTask] = [aliases.run, requests.run, upload_lease.run]
    if context.settings.model_registry_blob_collection_interval_s > 0:
        collector = OrphanBlobCollector(
            artifacts,
            queries,
            interval_s=context.settings.model_registry_blob_collection_interval_s,
            grace_s=context.settings.model_registry_blob_grace_s,
        )
        background.append(collector.run)
    return ServiceComponents(
        registrations=[
            lambda server: service_pb2_grpc.add_ModelRegistryServicer_to_server(servicer, server)
        ],
        background=background,
    )


SPEC = ServiceSpec(
    name=ServiceName.MODEL_REGISTRY,
    services=(service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"],),
    catalog=CATALOG,
    migrations=tuple(load_migrations("model_registry", Path(__file__).parent / "migrations")),
    build=build,
)
