"""The feature store as the host runs it: its contract, events, tables and wiring."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from lathe.feature_store.v1 import service_pb2, service_pb2_grpc
from libs.config import ServiceName
from libs.db import load_migrations
from libs.eventstore import RequestLog
from libs.runtime import ServiceComponents, ServiceContext, ServiceSpec
from services.feature_store.api.servicer import FeatureStoreServicer
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.definitions.catalog import DefinitionCatalog
from services.feature_store.app.definitions.commands import DefinitionCommands
from services.feature_store.app.offline.statistics import StatisticsReader
from services.feature_store.app.offline.training_sets import HistoricalReader
from services.feature_store.app.online.promotion import PendingPromoter
from services.feature_store.app.online.reader import OnlineReader
from services.feature_store.app.online.replica import OnlineReplica
from services.feature_store.app.streaming.backfill import Backfiller
from services.feature_store.app.streaming.ingest import StreamIngestor
from services.feature_store.app.writes.materialize import Materializer
from services.feature_store.app.writes.push import Pusher
from services.feature_store.app.writes.writer import FeatureWriter
from services.feature_store.events import CATALOG
from services.feature_store.store.definitions import DefinitionQueries
from services.feature_store.store.offline_mirror import OfflineMirror


def build(context: ServiceContext) -> ServiceComponents:
    requests = RequestLog(
        context.store, window=timedelta(seconds=context.settings.request_id_window_s)
    )
    queries = DefinitionQueries(context.pool)
    cache = DefinitionsCache(queries)
    replica = OnlineReplica(context.pool, max_rows=context.settings.feature_store_replica_max_rows)
    writer = FeatureWriter(context.store, replica)
    mirror = OfflineMirror(
        context.pool,
        database=context.settings.feature_store_mirror_path,
        scratch=context.settings.home,
    )
    servicer = FeatureStoreServicer(
        DefinitionCommands(context.pool, context.store, queries, requests),
        DefinitionCatalog(queries),
        cache,
        OnlineReader(context.pool, cache, replica),
        Pusher(context.pool, cache, writer, requests),
        Materializer(context.pool, context.store, cache, writer, requests),
        HistoricalReader(context.pool, context.store, cache, mirror, requests),
        StatisticsReader(context.pool, cache),
        Backfiller(context.pool, context.store, cache, requests),
    )
    return ServiceComponents(
        registrations=[
            lambda server: service_pb2_grpc.add_FeatureStoreServicer_to_server(servicer, server)
        ],
        background=[
            cache.watch,
            replica.run,
            requests.run,
            PendingPromoter(context.pool).run,
            StreamIngestor(context, cache).run,
        ],
        closers=[mirror.close],
    )


SPEC = ServiceSpec(
    name=ServiceName.FEATURE_STORE,
    services=(service_pb2.DESCRIPTOR.services_by_name["FeatureStore"],),
    catalog=CATALOG,
    migrations=tuple(load_migrations("feature_store", Path(__file__).parent / "migrations")),
    build=build,
)
