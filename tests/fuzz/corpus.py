"""Valid calls made before fuzzing: resources to aim at, and requests to mutate.

Random values seldom get past a request's first check. So before fuzzing, this
makes one ordinary session's worth of valid calls (a model with versions, aliases
and a protected alias; entities, batch, push and stream views, an on-demand view, a
feature service, materialized and pushed values, training sets). Each call is kept
as a seed the fuzz mutates a few fields at a time, and every value in its request and
reply (names, versions, page tokens, snapshot ids) becomes a plausible value for
fields of the same name anywhere. Inference's corpus, which needs models that load,
is ``inference_corpus``; these two are the only places that know RPCs by name, and an
RPC missing from both is still fuzzed from its descriptor alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pyarrow as pa
from google.protobuf import timestamp_pb2

from lathe.feature_store.v1 import request_response_pb2 as frr
from lathe.model_registry.v1 import message_pb2 as rm
from lathe.model_registry.v1 import request_response_pb2 as rrr
from libs.config import ServiceName
from libs.sdk.feature_store import to_column
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    NotNull,
    PushSource,
    Range,
    StreamSource,
    String,
    on_demand_feature_view,
    repository_of,
)
from tests.fuzz.inference_corpus import seed_inference
from tests.fuzz.platform import FuzzPlatform

REGISTRY = ServiceName.MODEL_REGISTRY
FEATURES = ServiceName.FEATURE_STORE
MODEL = "fuzz-model"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def seed_registry(platform: FuzzPlatform) -> None:
    policy = rm.PromotionPolicy(
        protected_aliases=[
            rm.ProtectedAlias(
                alias="production",
                gates=[
                    rm.MetricGate(
                        metric="auc", comparison=rm.COMPARISON_GREATER_OR_EQUAL, threshold=0.5
                    )
                ],
                require_approval=True,
            )
        ]
    )
    seed = platform.seed
    await seed(
        REGISTRY,
        "CreateModel",
        rrr.CreateModelRequest(
            name=MODEL, description="fuzz seed", owner="fuzz-team", tags={"team": "risk"}
        ),
    )
    await seed(REGISTRY, "CreateModel", rrr.CreateModelRequest(name="fuzz-model-b", owner="x"))
    await seed(
        REGISTRY,
        "SetPromotionPolicy",
        rrr.SetPromotionPolicyRequest(model_name=MODEL, policy=policy),
    )
    await seed(REGISTRY, "GetModel", rrr.GetModelRequest(name=MODEL))
    await seed(REGISTRY, "ListModels", rrr.ListModelsRequest(page_size=1))
    await seed(REGISTRY, "ListModels", rrr.ListModelsRequest(owner="fuzz-team", tag_key="team"))
    signature = rm.Signature(
        inputs=[rm.TensorSpec(name="amount", dtype=rm.DATA_TYPE_FLOAT32, shape=[-1, 1])],
        outputs=[rm.TensorSpec(name="p_default", dtype=rm.DATA_TYPE_FLOAT32)],
    )
    for content in (b"onnx-bytes-1", b"onnx-bytes-2"):
        metadata = rrr.ModelVersionMetadata(
            model_name=MODEL,
            description="fuzz seed version",
            signature=signature,
            metrics={"auc": 0.8},
            tags={"stage": "seed"},
            lineage=rm.Lineage(training_job_id="job-1", code_revision="abc123"),
            artifacts=[rrr.ArtifactDeclaration(name="model.onnx", format=rm.ARTIFACT_FORMAT_ONNX)],
        )
        await seed(
            REGISTRY,
            "RegisterModelVersion",
            rrr.RegisterModelVersionRequest(metadata=metadata),
            rrr.RegisterModelVersionRequest(
                chunk=rrr.ArtifactChunk(name="model.onnx", data=content)
            ),
        )
    await seed(REGISTRY, "GetModelVersion", rrr.GetModelVersionRequest(model_name=MODEL, version=1))
    await seed(
        REGISTRY, "ListModelVersions", rrr.ListModelVersionsRequest(model_name=MODEL, page_size=1)
    )
    await seed(
        REGISTRY,
        "DownloadArtifact",
        rrr.DownloadArtifactRequest(model_name=MODEL, version=1, artifact_name="model.onnx"),
    )
    for alias, version, expected in (("staging", 1, 0), ("staging", 2, 1), ("canary", 1, 0)):
        await seed(
            REGISTRY,
            "SetAlias",
            rrr.SetAliasRequest(
                model_name=MODEL, alias=alias, version=version, expected_version=expected
            ),
        )
    await seed(
        REGISTRY,
        "DeleteAlias",
        rrr.DeleteAliasRequest(model_name=MODEL, alias="canary", expected_version=1),
    )
    await seed(
        REGISTRY,
        "ApproveModelVersion",
        rrr.ApproveModelVersionRequest(
            model_name=MODEL, version=2, alias="production", comment="ok"
        ),
        actor="approver",
    )
    await seed(
        REGISTRY,
        "SetAlias",
        rrr.SetAliasRequest(
            model_name=MODEL, alias="production", version=2, expected_version=0, traffic_share=1.0
        ),
    )
    await seed(REGISTRY, "ResolveAlias", rrr.ResolveAliasRequest(model_name=MODEL, alias="staging"))
    await seed(
        REGISTRY,
        "ResolveAlias",
        rrr.ResolveAliasRequest(
            model_name=MODEL, alias="staging", as_of=_timestamp(datetime.now(UTC))
        ),
    )
    await seed(REGISTRY, "GetLineage", rrr.GetLineageRequest(model_name=MODEL, version=1))
    await seed(
        REGISTRY, "GetModelHistory", rrr.GetModelHistoryRequest(model_name=MODEL, page_size=1)
    )


@on_demand_feature_view(
    inputs=["fuzz_terms:rate"],
    request_fields=[Field("amount", Float64)],
    features=[Field("interest", Float64)],
    name="fuzz_interest",
)
def fuzz_interest(row: dict) -> dict:
    rate = row.get("fuzz_terms:rate")
    return {"interest": None if rate is None else row["amount"] * rate / 100}


async def _source_tables(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """CREATE TABLE public.fuzz_loans (loan_id text, issued_at timestamptz,
               rate double precision, term bigint);
           CREATE TABLE public.fuzz_labels (loan text, at timestamptz, defaulted boolean)"""
    )
    await pool.executemany(
        "INSERT INTO public.fuzz_loans VALUES ($1, $2, $3, $4)",
        [("L1", T0, 5.0, 36), ("L1", T0 + timedelta(days=2), 6.5, 36), ("L2", T0, 4.0, 60)],
    )
    await pool.executemany(
        "INSERT INTO public.fuzz_labels VALUES ($1, $2, $3)",
        [("L1", T0 + timedelta(days=1), False), ("L2", T0 + timedelta(days=3), True)],
    )
    # Label columns a training set must hand back unchanged, whatever their names and types.
    await pool.execute(
        f"""CREATE TABLE public.fuzz_odd_labels (loan text, at timestamptz,
               {", ".join(f'"{name}" {kind}' for name, kind in ODD_LABEL_COLUMNS)});
           INSERT INTO public.fuzz_odd_labels
           VALUES ('L1', '{T0 + timedelta(days=1)}', true, 7, 'true', '', 2.75,
                   '{T0}'::timestamptz + interval '1 microsecond')"""
    )


ODD_LABEL_COLUMNS = (
    ("Defaulted", "boolean"),
    ("with space", "bigint"),
    ("at@sign", "text"),
    ("empty", "text"),
    ("amount_numeric", "numeric"),
    ("ts", "timestamptz"),
)


def _entity_rows() -> bytes:
    return _arrow(
        pa.table(
            {
                "loan_id": ["L1", "L2"],
                "event_time": pa.array([T0 + timedelta(days=3)] * 2, pa.timestamp("us", tz="UTC")),
                "amount": [1000.0, 2500.0],
            }
        )
    )


def _odd_entity_rows() -> list[bytes]:
    """Valid Arrow streams that are unusual: nanosecond times, odd column names, nulls."""
    nanos = pa.array([1_772_323_200_000_000_001, 1_772_323_200_999_999_999], pa.timestamp("ns"))
    return [
        _arrow(pa.table({"loan_id": ["L1", "L2"], "event_time": nanos, "amount": [1.0, 2.0]})),
        _arrow(
            pa.table(
                {
                    "loan_id": ["L1", None],
                    "event_time": pa.array([None, T0], pa.timestamp("us", tz="UTC")),
                    "Upper Case": [1, 2],
                    "at@sign": ["x", ""],
                    "amount": [None, 2.0],
                }
            )
        ),
        _arrow(
            pa.table(
                {
                    "loan_id": pa.array([], pa.string()),
                    "event_time": pa.array([], pa.timestamp("s")),
                    "amount": pa.array([], pa.float64()),
                }
            )
        ),
        _arrow(
            pa.table(
                {
                    "loan_id": pa.array([1, 2], pa.int64()),
                    "event_time": pa.array([T0, T0], pa.timestamp("ms", tz="Asia/Kolkata")),
                    "amount": [1, 2],
                }
            )
        ),
    ]


def _arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


async def seed_feature_store(platform: FuzzPlatform) -> None:
    await _source_tables(platform.pool)
    loan = Entity("fuzz_loan", join_key="loan_id")
    repository = repository_of(
        [
            FeatureView(
                "fuzz_terms",
                entity=loan,
                source=BatchSource("public.fuzz_loans", event_time_column="issued_at"),
                features=[Field("rate", Float64, [Range(0, 100)]), Field("term", Int64)],
                ttl=timedelta(days=365),
            ),
            FeatureView(
                "fuzz_pushed",
                entity=loan,
                source=PushSource(),
                features=[Field("score", Float64, [NotNull()])],
                quarantine_violations=True,
            ),
            FeatureView(
                "fuzz_stream",
                entity=loan,
                source=StreamSource("fuzz_src", event_time_field="at"),
                aggregations=[
                    Aggregation("amount", "count", timedelta(hours=1), "amount_count_1h"),
                    Aggregation("amount", "sum", timedelta(hours=1), "amount_sum_1h"),
                    Aggregation("amount", "stddev", timedelta(days=1), "amount_sd_1d"),
                    Aggregation(
                        "amount",
                        "variance_pop",
                        timedelta(days=1),
                        "amount_varp_1d_1d_ago",
                        offset=timedelta(days=1),
                    ),
                    Aggregation("merchant", "count_distinct", timedelta(days=7), "merchants_7d"),
                    Aggregation(
                        "amount", "percentile", timedelta(days=7), "amount_p99_7d", percentile=99
                    ),
                    Aggregation("amount", "sum", None, "amount_ever", lifetime=True),
                ],
            ),
            FeatureView(
                "fuzz_query",
                entity=loan,
                source=BatchSource(
                    query="SELECT loan_id, issued_at, rate AS apr, term FROM public.fuzz_loans",
                    event_time_column="issued_at",
                    field_mapping={"apr": "rate"},
                ),
                features=[Field("rate", Float64), Field("term", Int64)],
            ),
            FeatureView(
                "fuzz_doomed",
                entity=loan,
                source=PushSource(),
                features=[Field("gone", Float64)],
            ),
            fuzz_interest,
            FeatureService("fuzz_train", ["fuzz_terms:rate", "fuzz_interest:*"]),
        ]
    )
    seed = platform.seed
    await seed(FEATURES, "PlanDefinitions", frr.PlanDefinitionsRequest(repository=repository))
    await seed(FEATURES, "ApplyDefinitions", frr.ApplyDefinitionsRequest(repository=repository))
    await seed(FEATURES, "ListFeatureViews", frr.ListFeatureViewsRequest(page_size=1))
    await seed(FEATURES, "GetFeatureView", frr.GetFeatureViewRequest(name="fuzz_terms", version=1))
    await seed(FEATURES, "Materialize", frr.MaterializeRequest(feature_view="fuzz_terms"))
    await seed(
        FEATURES,
        "Materialize",
        # A re-run of a range (the first call loaded through every event time, so a
        # narrower end_time is refused).
        frr.MaterializeRequest(
            feature_view="fuzz_terms", start_time=_timestamp(datetime.now(UTC) - timedelta(days=1))
        ),
    )
    await seed(
        FEATURES,
        "PushFeatures",
        frr.PushFeaturesRequest(
            feature_view="fuzz_pushed",
            columns={
                "loan_id": to_column(["L1", "L2"]),
                "event_time": to_column([T0, T0 + timedelta(hours=1)]),
                "score": to_column([0.5, 0.7]),
            },
        ),
    )
    entities = {"loan_id": to_column(["L1", "L2"])}
    await seed(
        FEATURES,
        "GetOnlineFeatures",
        frr.GetOnlineFeaturesRequest(
            feature_service="fuzz_train",
            entities=entities,
            request_data={"amount": to_column([1000.0, 2500.0])},
        ),
    )
    await seed(
        FEATURES,
        "GetOnlineFeatures",
        frr.GetOnlineFeaturesRequest(
            feature_list=frr.FeatureList(features=["fuzz_pushed:score", "fuzz_terms:*"]),
            entities=entities,
        ),
    )
    replies = await seed(
        FEATURES,
        "GetHistoricalFeatures",
        frr.GetHistoricalFeaturesRequest(
            feature_service="fuzz_train", entity_rows_arrow=_entity_rows()
        ),
    )
    await seed(
        FEATURES,
        "GetHistoricalFeatures",
        frr.GetHistoricalFeaturesRequest(
            feature_list=frr.FeatureList(features=["fuzz_terms:*"]),
            label_source=frr.LabelSource(
                table="public.fuzz_labels",
                entity_column="loan",
                event_time_column="at",
                columns=["defaulted"],
                start_time=_timestamp(T0),
                end_time=_timestamp(T0 + timedelta(days=30)),
            ),
        ),
    )
    for rows in _odd_entity_rows():
        await seed(
            FEATURES,
            "GetHistoricalFeatures",
            frr.GetHistoricalFeaturesRequest(feature_service="fuzz_train", entity_rows_arrow=rows),
            must_succeed=False,
        )
    await seed(
        FEATURES,
        "GetHistoricalFeatures",
        frr.GetHistoricalFeaturesRequest(
            feature_list=frr.FeatureList(features=["fuzz_terms:*"]),
            label_source=frr.LabelSource(
                table="public.fuzz_odd_labels",
                entity_column="loan",
                event_time_column="at",
                columns=[name for name, _ in ODD_LABEL_COLUMNS],
            ),
        ),
        must_succeed=False,
    )
    snapshot = next(r for r in replies if r.HasField("snapshot")).snapshot.snapshot_id
    await seed(
        FEATURES,
        "GetFeatureStatistics",
        frr.GetFeatureStatisticsRequest(feature_view="fuzz_terms", snapshot_id=snapshot),
    )
    await seed(
        FEATURES, "BackfillStreamView", frr.BackfillStreamViewRequest(feature_view="fuzz_stream")
    )
    await seed(FEATURES, "Materialize", frr.MaterializeRequest(feature_view="fuzz_query"))
    await seed(
        FEATURES,
        "GetOnlineFeatures",
        frr.GetOnlineFeaturesRequest(
            feature_list=frr.FeatureList(features=["fuzz_stream:*", "fuzz_query:*"]),
            entities=entities,
        ),
    )
    await seed(
        FEATURES,
        "DeprecateDefinition",
        frr.DeprecateDefinitionRequest(
            kind="feature_view", name="fuzz_stream", reason="use fuzz_stream_v2"
        ),
    )
    await seed(
        FEATURES,
        "DeprecateDefinition",
        frr.DeprecateDefinitionRequest(kind="feature_view", name="fuzz_stream", lift=True),
    )
    await seed(
        FEATURES,
        "DeleteDefinition",
        # In use by the feature service fuzz_train: refused (FAILED_PRECONDITION).
        frr.DeleteDefinitionRequest(kind="feature_view", name="fuzz_terms", reason="fuzz"),
        must_succeed=False,
    )
    await seed(
        FEATURES,
        "DeleteDefinition",
        frr.DeleteDefinitionRequest(kind="feature_view", name="fuzz_doomed", reason="fuzz"),
    )
    await _seed_composite_keys(platform)


async def _seed_composite_keys(platform: FuzzPlatform) -> None:
    """A composite entity (ADR 0023): pushes, online reads and a training set keyed by two
    parts, one of them holding the separator and the escape."""
    card = Entity(
        "fuzz_card_merchant", join_keys=("card_id", "merchant_id"), key_types=(Int64, String)
    )
    spend = FeatureView(
        "fuzz_card_spend", entity=card, source=PushSource(), features=[Field("amount", Float64)]
    )
    seed = platform.seed
    repository = repository_of([card, spend])
    await seed(FEATURES, "ApplyDefinitions", frr.ApplyDefinitionsRequest(repository=repository))
    keys = {"card_id": to_column([4111, 4111]), "merchant_id": to_column(["m|1", "m\\2"])}
    columns = {**keys, "event_time": to_column([T0, T0]), "amount": to_column([1.0, 2.0])}
    await seed(
        FEATURES,
        "PushFeatures",
        frr.PushFeaturesRequest(feature_view="fuzz_card_spend", columns=columns),
    )
    selection = frr.FeatureList(features=["fuzz_card_spend:*"])
    await seed(
        FEATURES,
        "GetOnlineFeatures",
        frr.GetOnlineFeaturesRequest(feature_list=selection, entities=keys),
    )
    rows = pa.table(
        {
            "card_id": pa.array([4111, 4111], pa.int64()),
            "merchant_id": ["m|1", "m\\2"],
            "event_time": pa.array([T0 + timedelta(days=3)] * 2, pa.timestamp("us", tz="UTC")),
        }
    )
    await seed(
        FEATURES,
        "GetHistoricalFeatures",
        frr.GetHistoricalFeaturesRequest(feature_list=selection, entity_rows_arrow=_arrow(rows)),
    )


async def seed_all(platform: FuzzPlatform) -> None:
    await seed_registry(platform)
    await seed_feature_store(platform)
    await seed_inference(platform)
